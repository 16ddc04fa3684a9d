//! Tenant networking on the host: what the agent builds from the desired state's networks,
//! ports, remote ports and floating IPs.
//!
//! - [`config`]: the `[network]` section of the agent configuration.
//! - [`dhcp`]: DHCP frames, parsed and built, and the answer to each (pure).
//! - [`dhcp_server`]: the per-network DHCP responder on the integration bridge.
//! - [`router`]: per-network router namespaces doing floating-IP NAT, as they should be (pure).
//! - [`router_linux`]: the router driver (`ip`, `nft`, `sysctl`, `arping`) and the reconcile
//!   loop; [`router_fake`] its in-memory fake; [`conformance_router`] the suite both pass.
//! - [`routers`]: the routers as the network reconcile uses them (bridge mappings, plugs).
//! - [`sg_flows`]: security group rules as OpenFlow matches (pure).
//! - [`converge`]: the network reconcile (I/O): applies the plans through the drivers.
//! - [`task`]: runs the network reconcile next to the executor.
//! - [`ovs_plan`]: bridges, ports, tunnels and OpenFlow flows the host should have (pure).

pub mod config;
pub mod conformance_router;
pub mod converge;
pub mod dhcp;
pub mod dhcp_server;
pub mod ovs_plan;
pub mod router;
pub mod router_fake;
pub mod router_linux;
pub mod routers;
pub mod sg_flows;
pub mod task;
