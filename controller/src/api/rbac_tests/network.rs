//! NetworkService through the real service on the in-process cluster: who may do what, and the
//! IPAM, floating IP and security group behaviour a client sees.
use flotilla_proto::v1 as pb;
use pb::network_service_server::NetworkService;
use pb::quota_service_server::QuotaService;
use tonic::{Code, Status};

use super::{Rpc, Target, World};

impl World {
    /// A network of `project` created by the admin; returns its id.
    async fn admin_network(&self, project: &str, external: bool) -> String {
        let r = self.admin(pb::CreateNetworkRequest {
            project: project.into(),
            name: self.fresh("net"),
            network_type: if external {
                pb::NetworkType::Flat as i32
            } else {
                pb::NetworkType::Unspecified as i32
            },
            physical_network: if external {
                self.fresh("physnet")
            } else {
                String::new()
            },
            external,
            ..Default::default()
        });
        self.networks
            .create_network(r)
            .await
            .unwrap()
            .into_inner()
            .id
    }

    async fn admin_subnet(&self, network: &str, cidr: &str) -> String {
        let r = self.admin(pb::CreateSubnetRequest {
            network: network.into(),
            cidr: cidr.into(),
            ..Default::default()
        });
        self.networks
            .create_subnet(r)
            .await
            .unwrap()
            .into_inner()
            .id
    }

    /// A token of a fresh member of `project`, scoped to it (setup of per-project resources).
    async fn scoped_member(&self, project: &str) -> String {
        let name = self.fresh("netops");
        self.user(&name, &[(project, "member")]).await;
        self.login(&name, project).await.unwrap().token
    }

    /// A port of `project` (on a new network with a subnet); returns its id.
    async fn port_in(&self, project: &str, token: &str) -> String {
        let net = self.admin_network(project, false).await;
        self.admin_subnet(&net, "10.0.0.0/24").await;
        let r = self
            .req(
                Some(token),
                pb::CreatePortRequest {
                    network: net,
                    ..Default::default()
                },
            )
            .unwrap();
        self.networks.create_port(r).await.unwrap().into_inner().id
    }

    async fn group_in(&self, token: &str) -> String {
        let r = self
            .req(
                Some(token),
                pb::CreateSecurityGroupRequest {
                    name: self.fresh("sg"),
                    ..Default::default()
                },
            )
            .unwrap();
        let g = self.networks.create_security_group(r).await.unwrap();
        g.into_inner().id
    }

    async fn floating_ip_in(&self, token: &str) -> String {
        let ext = self.admin_network("other", true).await;
        self.admin_subnet(&ext, "203.0.113.0/24").await;
        let r = self
            .req(
                Some(token),
                pb::CreateFloatingIpRequest {
                    floating_network: ext,
                    ..Default::default()
                },
            )
            .unwrap();
        self.networks
            .create_floating_ip(r)
            .await
            .unwrap()
            .into_inner()
            .id
    }

    pub(super) async fn call_network(
        &self,
        rpc: Rpc,
        token: Option<&str>,
        t: Target,
    ) -> Result<(), Status> {
        let project = t.name();
        let n = &self.networks;
        // Rows create many resources: no quota gets in the way.
        for p in ["own", "other"] {
            let r = self.admin(pb::SetQuotaRequest {
                project: p.into(),
                networks: Some(-1),
                ports: Some(-1),
                floating_ips: Some(-1),
                subnets: Some(-1),
                security_groups: Some(-1),
                security_group_rules: Some(-1),
                ..Default::default()
            });
            self.quotas.set_quota(r).await.unwrap();
        }
        match rpc {
            Rpc::CreateNetworkForProject => {
                let r = pb::CreateNetworkRequest {
                    project: project.into(),
                    name: self.fresh("net"),
                    ..Default::default()
                };
                n.create_network(self.req(token, r)?).await?;
            }
            Rpc::GetNetwork => {
                let network = self.admin_network(project, false).await;
                let r = pb::GetNetworkRequest {
                    network,
                    stale: false,
                };
                n.get_network(self.req(token, r)?).await?;
            }
            Rpc::UpdateNetwork => {
                let network = self.admin_network(project, false).await;
                let r = pb::UpdateNetworkRequest {
                    network,
                    description: Some("changed".into()),
                    ..Default::default()
                };
                n.update_network(self.req(token, r)?).await?;
            }
            Rpc::DeleteNetwork => {
                let network = self.admin_network(project, false).await;
                let r = pb::DeleteNetworkRequest {
                    network,
                    ..Default::default()
                };
                n.delete_network(self.req(token, r)?).await?;
            }
            Rpc::CreateSubnet => {
                let network = self.admin_network(project, false).await;
                let r = pb::CreateSubnetRequest {
                    network,
                    cidr: "10.1.0.0/24".into(),
                    ..Default::default()
                };
                n.create_subnet(self.req(token, r)?).await?;
            }
            Rpc::GetSubnet | Rpc::UpdateSubnet | Rpc::DeleteSubnet => {
                let network = self.admin_network(project, false).await;
                let subnet = self.admin_subnet(&network, "10.2.0.0/24").await;
                match rpc {
                    Rpc::GetSubnet => {
                        let r = pb::GetSubnetRequest {
                            subnet,
                            stale: false,
                        };
                        n.get_subnet(self.req(token, r)?).await?;
                    }
                    Rpc::UpdateSubnet => {
                        let r = pb::UpdateSubnetRequest {
                            subnet,
                            enable_dhcp: Some(false),
                            ..Default::default()
                        };
                        n.update_subnet(self.req(token, r)?).await?;
                    }
                    _ => {
                        let r = pb::DeleteSubnetRequest {
                            subnet,
                            ..Default::default()
                        };
                        n.delete_subnet(self.req(token, r)?).await?;
                    }
                }
            }
            Rpc::ListNetworks => {
                let r = pb::ListNetworksRequest::default();
                n.list_networks(self.req(token, r)?).await?;
            }
            Rpc::ListSubnets => {
                let r = pb::ListSubnetsRequest::default();
                n.list_subnets(self.req(token, r)?).await?;
            }
            Rpc::ListPorts => {
                let r = pb::ListPortsRequest::default();
                n.list_ports(self.req(token, r)?).await?;
            }
            Rpc::ListFloatingIps => {
                let r = pb::ListFloatingIpsRequest::default();
                n.list_floating_ips(self.req(token, r)?).await?;
            }
            Rpc::ListSecurityGroups => {
                let r = pb::ListSecurityGroupsRequest::default();
                n.list_security_groups(self.req(token, r)?).await?;
            }
            Rpc::ListSecurityGroupRules => {
                let r = pb::ListSecurityGroupRulesRequest::default();
                n.list_security_group_rules(self.req(token, r)?).await?;
            }
            Rpc::GetPort | Rpc::UpdatePort | Rpc::DeletePort => {
                let setup = self.scoped_member(project).await;
                let port = self.port_in(project, &setup).await;
                match rpc {
                    Rpc::GetPort => {
                        let r = pb::GetPortRequest { port, stale: false };
                        n.get_port(self.req(token, r)?).await?;
                    }
                    Rpc::UpdatePort => {
                        let r = pb::UpdatePortRequest {
                            port,
                            name: Some(self.fresh("nic")),
                            ..Default::default()
                        };
                        n.update_port(self.req(token, r)?).await?;
                    }
                    _ => {
                        let r = pb::DeletePortRequest {
                            port,
                            ..Default::default()
                        };
                        n.delete_port(self.req(token, r)?).await?;
                    }
                }
            }
            Rpc::GetFloatingIp
            | Rpc::UpdateFloatingIp
            | Rpc::DeleteFloatingIp
            | Rpc::AssociateFloatingIp
            | Rpc::DisassociateFloatingIp => {
                let setup = self.scoped_member(project).await;
                let floating_ip = self.floating_ip_in(&setup).await;
                match rpc {
                    Rpc::GetFloatingIp => {
                        let r = pb::GetFloatingIpRequest {
                            floating_ip,
                            stale: false,
                        };
                        n.get_floating_ip(self.req(token, r)?).await?;
                    }
                    Rpc::UpdateFloatingIp => {
                        let r = pb::UpdateFloatingIpRequest {
                            floating_ip,
                            description: Some("changed".into()),
                            ..Default::default()
                        };
                        n.update_floating_ip(self.req(token, r)?).await?;
                    }
                    Rpc::DeleteFloatingIp => {
                        let r = pb::DeleteFloatingIpRequest {
                            floating_ip,
                            ..Default::default()
                        };
                        n.delete_floating_ip(self.req(token, r)?).await?;
                    }
                    Rpc::AssociateFloatingIp => {
                        let port = self.port_in(project, &setup).await;
                        let r = pb::AssociateFloatingIpRequest {
                            floating_ip,
                            port,
                            ..Default::default()
                        };
                        n.associate_floating_ip(self.req(token, r)?).await?;
                    }
                    _ => {
                        let r = pb::DisassociateFloatingIpRequest {
                            floating_ip,
                            ..Default::default()
                        };
                        n.disassociate_floating_ip(self.req(token, r)?).await?;
                    }
                }
            }
            Rpc::GetSecurityGroup
            | Rpc::UpdateSecurityGroup
            | Rpc::DeleteSecurityGroup
            | Rpc::CreateSecurityGroupRule
            | Rpc::GetSecurityGroupRule
            | Rpc::DeleteSecurityGroupRule => {
                let setup = self.scoped_member(project).await;
                let security_group = self.group_in(&setup).await;
                let first_rule = || {
                    let state = self.networks.api.node.state();
                    let id = state.rules_of(&security_group).next().unwrap().id.clone();
                    id
                };
                match rpc {
                    Rpc::GetSecurityGroup => {
                        let r = pb::GetSecurityGroupRequest {
                            security_group,
                            stale: false,
                        };
                        n.get_security_group(self.req(token, r)?).await?;
                    }
                    Rpc::UpdateSecurityGroup => {
                        let r = pb::UpdateSecurityGroupRequest {
                            security_group,
                            description: Some("changed".into()),
                            ..Default::default()
                        };
                        n.update_security_group(self.req(token, r)?).await?;
                    }
                    Rpc::DeleteSecurityGroup => {
                        let r = pb::DeleteSecurityGroupRequest {
                            security_group,
                            ..Default::default()
                        };
                        n.delete_security_group(self.req(token, r)?).await?;
                    }
                    Rpc::CreateSecurityGroupRule => {
                        let r = pb::CreateSecurityGroupRuleRequest {
                            security_group,
                            direction: pb::SecurityGroupRuleDirection::Ingress as i32,
                            protocol: "tcp".into(),
                            port_range_min: Some(22),
                            ..Default::default()
                        };
                        n.create_security_group_rule(self.req(token, r)?).await?;
                    }
                    Rpc::GetSecurityGroupRule => {
                        let r = pb::GetSecurityGroupRuleRequest {
                            rule: first_rule(),
                            stale: false,
                        };
                        n.get_security_group_rule(self.req(token, r)?).await?;
                    }
                    _ => {
                        let r = pb::DeleteSecurityGroupRuleRequest {
                            rule: first_rule(),
                            ..Default::default()
                        };
                        n.delete_security_group_rule(self.req(token, r)?).await?;
                    }
                }
            }
            other => unreachable!("{other:?} is not a network RPC"),
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_networking_through_the_service_is_scoped_and_allocates_each_address_once() {
    let w = World::start().await;
    w.populate().await;
    let member = w.login("member", "own").await.unwrap().token;
    let reader = w.login("reader", "own").await.unwrap().token;
    let n = &w.networks;

    // A member creates a tenant network: VXLAN with an allocated VNI.
    let r = w
        .req(
            Some(&member),
            pb::CreateNetworkRequest {
                request_id: "net-1".into(),
                name: "private".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let net = n.create_network(r).await.unwrap().into_inner();
    assert_eq!(net.network_type, pb::NetworkType::Vxlan as i32);
    assert!(net.segmentation_id >= 1);
    assert_eq!(net.mtu, 1450);

    // Provider and external networks are admin only; readers cannot create anything.
    let r = w
        .req(
            Some(&member),
            pb::CreateNetworkRequest {
                name: "public".into(),
                external: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        n.create_network(r).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let r = w
        .req(
            Some(&reader),
            pb::CreateNetworkRequest {
                name: "mine".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        n.create_network(r).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // A small subnet: 3 pool addresses.
    let r = w
        .req(
            Some(&member),
            pb::CreateSubnetRequest {
                network: "private".into(),
                name: "tiny".into(),
                cidr: "10.9.0.0/29".into(),
                allocation_pools: vec![pb::SubnetAllocationPool {
                    start: "10.9.0.2".into(),
                    end: "10.9.0.4".into(),
                }],
                ..Default::default()
            },
        )
        .unwrap();
    let subnet = n.create_subnet(r).await.unwrap().into_inner();
    assert_eq!(subnet.gateway_ip, "10.9.0.1");
    assert_eq!(subnet.ip_version, 4);

    let port = |request_id: &str| {
        w.req(
            Some(&member),
            pb::CreatePortRequest {
                request_id: request_id.into(),
                network: "private".into(),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let a = n.create_port(port("port-a")).await.unwrap().into_inner();
    // A retry answers with the same port and allocates nothing more.
    let again = n.create_port(port("port-a")).await.unwrap().into_inner();
    assert_eq!(a.id, again.id);
    let b = n.create_port(port("port-b")).await.unwrap().into_inner();
    let c = n.create_port(port("port-c")).await.unwrap().into_inner();
    let mut addrs: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|p| p.fixed_ips[0].ip_address.clone())
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["10.9.0.2", "10.9.0.3", "10.9.0.4"]);
    let full = n.create_port(port("port-d")).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    // Every port got the project's default group.
    assert_eq!(a.security_group_ids.len(), 1);
    assert_eq!(a.security_group_ids, c.security_group_ids);

    // The reader sees the ports; another project's admin-less user does not.
    let r = w
        .req(Some(&reader), pb::ListPortsRequest::default())
        .unwrap();
    assert_eq!(n.list_ports(r).await.unwrap().into_inner().ports.len(), 3);
    let norole = w.login("norole", "").await.unwrap().token;
    let r = w
        .req(
            Some(&norole),
            pb::GetPortRequest {
                port: a.id.clone(),
                stale: false,
            },
        )
        .unwrap();
    assert_eq!(n.get_port(r).await.unwrap_err().code(), Code::NotFound);
    let r = w
        .req(
            Some(&member),
            pb::ListPortsRequest {
                all_projects: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        n.list_ports(r).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // An admin's external network; the member allocates a floating IP and associates it.
    let r = w.admin(pb::CreateNetworkRequest {
        project: "other".into(),
        name: "public".into(),
        network_type: pb::NetworkType::Flat as i32,
        physical_network: "physnet1".into(),
        external: true,
        ..Default::default()
    });
    n.create_network(r).await.unwrap();
    let r = w.admin(pb::CreateSubnetRequest {
        network: "public".into(),
        cidr: "203.0.113.0/24".into(),
        ..Default::default()
    });
    n.create_subnet(r).await.unwrap();
    let r = w
        .req(
            Some(&member),
            pb::CreateFloatingIpRequest {
                floating_network: "public".into(),
                port: a.id.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    let fip = n.create_floating_ip(r).await.unwrap().into_inner();
    assert_eq!(fip.floating_ip_address, "203.0.113.2");
    assert_eq!(fip.fixed_ip_address, a.fixed_ips[0].ip_address);
    let r = w
        .req(
            Some(&member),
            pb::DisassociateFloatingIpRequest {
                floating_ip: "203.0.113.2".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let fip = n.disassociate_floating_ip(r).await.unwrap().into_inner();
    assert_eq!(fip.port_id, "");

    // Deletes in use are refused with FAILED_PRECONDITION.
    let r = w
        .req(
            Some(&member),
            pb::DeleteNetworkRequest {
                network: "private".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        n.delete_network(r).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let r = w
        .req(
            Some(&member),
            pb::DeleteSecurityGroupRequest {
                security_group: "default".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        n.delete_security_group(r).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    // Security groups: new ones start with two egress rules; rules are validated.
    let r = w
        .req(
            Some(&member),
            pb::CreateSecurityGroupRequest {
                name: "web".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let web = n.create_security_group(r).await.unwrap().into_inner();
    assert_eq!(web.rules.len(), 2);
    let rule = |min: u32| {
        w.req(
            Some(&member),
            pb::CreateSecurityGroupRuleRequest {
                security_group: "web".into(),
                direction: pb::SecurityGroupRuleDirection::Ingress as i32,
                protocol: "tcp".into(),
                port_range_min: Some(min),
                port_range_max: Some(443),
                ..Default::default()
            },
        )
        .unwrap()
    };
    n.create_security_group_rule(rule(443)).await.unwrap();
    assert_eq!(
        n.create_security_group_rule(rule(443))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        n.create_security_group_rule(rule(444))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let r = w
        .req(Some(&reader), pb::ListSecurityGroupsRequest::default())
        .unwrap();
    let mut names: Vec<String> = n
        .list_security_groups(r)
        .await
        .unwrap()
        .into_inner()
        .security_groups
        .into_iter()
        .map(|g| g.name)
        .collect();
    names.sort();
    assert_eq!(names, ["default", "web"]);
    w.cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_port_creates_never_share_an_address_and_stop_at_the_pool_size() {
    let w = World::start().await;
    w.populate().await;
    let member = w.login("member", "own").await.unwrap().token;
    let n = &w.networks;
    let r = w.admin(pb::SetQuotaRequest {
        project: "own".into(),
        ports: Some(-1),
        ..Default::default()
    });
    w.quotas.set_quota(r).await.unwrap();
    let r = w
        .req(
            Some(&member),
            pb::CreateNetworkRequest {
                name: "busy".into(),
                ..Default::default()
            },
        )
        .unwrap();
    n.create_network(r).await.unwrap();
    // 10.8.0.0/28 without network, broadcast and gateway: 13 addresses.
    let r = w
        .req(
            Some(&member),
            pb::CreateSubnetRequest {
                network: "busy".into(),
                cidr: "10.8.0.0/28".into(),
                ..Default::default()
            },
        )
        .unwrap();
    n.create_subnet(r).await.unwrap();
    let calls = (0..20).map(|i| {
        let r = w
            .req(
                Some(&member),
                pb::CreatePortRequest {
                    request_id: format!("concurrent-{i}"),
                    network: "busy".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        n.create_port(r)
    });
    let results = futures::future::join_all(calls).await;
    let mut addresses = std::collections::BTreeSet::new();
    let mut exhausted = 0;
    for r in results {
        match r {
            Ok(p) => {
                let p = p.into_inner();
                assert!(addresses.insert(p.fixed_ips[0].ip_address.clone()), "{p:?}");
            }
            Err(e) if e.code() == Code::ResourceExhausted => exhausted += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((addresses.len(), exhausted), (13, 7));
    w.cluster.shutdown();
}
