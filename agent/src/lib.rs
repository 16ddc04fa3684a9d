//! `flotilla-agent` as a library: the compute agent's modules, used by its binary and tests.
//!
//! - [`config`]: the TOML configuration.
//! - [`session`]: the session with the controllers (registration, lease, heartbeats).
//! - [`executor`]: converges the host (scan → [`reconcile::plan`] → drivers).
//! - [`commands`]: operation commands and queries.
//! - [`fence`]: self-fencing: running guests paused while the host holds no valid lease (I7).
//! - [`desired`]: the controller's desired state as the planner's input (pure).
//! - [`transfer`]: image fetches and snapshot uploads.
//! - [`service`]: wires the tasks together.
//! - [`net`]: tenant networking on the host (Open vSwitch flows, DHCP, floating-IP NAT).
//! - [`driver`], [`render`], [`reconcile`]: drivers, pure renderers, the pure planner.
//! - [`testbed`]: test and benchmark infrastructure only (two namespaced libvirt hosts on one
//!   machine); the agent does not use it.

pub mod commands;
pub mod config;
pub mod desired;
pub mod driver;
pub mod executor;
pub mod fence;
pub mod net;
pub mod reconcile;
pub mod render;
pub mod service;
pub mod session;
pub mod testbed;
pub mod testbed_ovs;
pub mod transfer;
