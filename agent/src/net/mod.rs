//! Tenant networking on the host: what the agent builds from the desired state's networks,
//! ports, remote ports and floating IPs.
//!
//! - [`dhcp`]: DHCP (and gratuitous ARP) frames, parsed and built (pure).
//! - [`dhcp_server`]: the per-network DHCP responder on the integration bridge.
//! - [`router`]: per-network router namespaces doing floating-IP NAT, as they should be (pure).
//! - [`router_linux`]: the router driver (`ip`, `nft`) and its fake.
//! - [`ovs_plan`]: bridges, ports, tunnels and OpenFlow flows the host should have (pure).

pub mod dhcp;
pub mod dhcp_server;
pub mod ovs_plan;
pub mod router;
pub mod router_linux;
