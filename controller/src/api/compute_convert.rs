//! Domain ↔ proto conversion for hosts, servers and operations.
use flotilla_proto::v1 as pb;

use super::convert::meta;
use crate::state::{Host, ItemState, OpState, Operation, PowerState, Server, ServerStatus, State};

pub fn status(s: ServerStatus) -> pb::ServerStatus {
    match s {
        ServerStatus::Build => pb::ServerStatus::Build,
        ServerStatus::Active => pb::ServerStatus::Active,
        ServerStatus::Shutoff => pb::ServerStatus::Shutoff,
        ServerStatus::Reboot => pb::ServerStatus::Reboot,
        ServerStatus::HardReboot => pb::ServerStatus::HardReboot,
        ServerStatus::Error => pb::ServerStatus::Error,
        ServerStatus::Deleting => pb::ServerStatus::Deleted,
        ServerStatus::Rebuild => pb::ServerStatus::Rebuild,
        ServerStatus::Migrating => pb::ServerStatus::Migrating,
    }
}

pub fn power(p: PowerState) -> pb::ServerPowerState {
    match p {
        PowerState::NoState => pb::ServerPowerState::Unspecified,
        PowerState::Running => pb::ServerPowerState::Running,
        PowerState::Paused => pb::ServerPowerState::Paused,
        PowerState::Shutdown => pb::ServerPowerState::Shutdown,
        PowerState::Crashed => pb::ServerPowerState::Crashed,
    }
}

pub fn host_state(h: &Host) -> pb::HostState {
    if h.is_up() {
        pb::HostState::Up
    } else {
        pb::HostState::Down
    }
}

pub fn server(state: &State, s: &Server) -> pb::Server {
    let host = state.host(&s.host_id).filter(|h| h.id == s.host_id);
    pb::Server {
        id: s.id.clone(),
        name: s.name.clone(),
        project_id: s.project_id.clone(),
        user_id: s.user_id.clone(),
        flavor_id: s.flavor.id.clone(),
        image_id: s.image.id.clone(),
        // A server whose host is down may or may not run: say so (Nova's UNKNOWN).
        status: if host.is_some_and(|h| !h.is_up()) && s.status != ServerStatus::Deleting {
            pb::ServerStatus::Unknown as i32
        } else {
            status(s.status) as i32
        },
        task_state: s.task_state.clone(),
        power_state: power(s.power_state) as i32,
        host: host.map(|h| h.info.hostname.clone()).unwrap_or_default(),
        host_status: host.map(host_state).unwrap_or_default() as i32,
        availability_zone: s.availability_zone.clone(),
        locked: s.locked,
        locked_reason: s.locked_reason.clone(),
        addresses: addresses(state, s),
        fault: s.fault.as_ref().map(|f| pb::ServerFault {
            message: f.message.clone(),
            code: tonic::Code::Internal as i32,
            details: String::new(),
            time_ms: f.time_ms,
        }),
        placement_generation: s.placement_generation,
        metadata: s.metadata.clone().into_iter().collect(),
        key_name: String::new(),
        user_data: s.user_data.clone(),
        meta: Some(meta(&s.meta)),
        server_group_id: s.group_id.clone(),
        launched_at_ms: s.launched_at_ms,
        current_operation_id: if s.task_state.is_empty() {
            String::new()
        } else {
            s.current_operation_id.clone()
        },
    }
}

/// A server's addresses in NIC order: each port's fixed IPs, then the floating IPs mapped to it.
pub fn addresses(state: &State, s: &Server) -> Vec<pb::ServerAddress> {
    let mut out = Vec::new();
    for p in state.server_ports(s) {
        let network_name = state
            .network(&p.network_id)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let address = |ip: &str, kind: pb::ServerAddressType| pb::ServerAddress {
            network_id: p.network_id.clone(),
            network_name: network_name.clone(),
            port_id: p.id.clone(),
            ip: ip.to_owned(),
            mac: p.mac_address.clone(),
            address_type: kind as i32,
        };
        for f in &p.fixed_ips {
            out.push(address(&f.ip_address, pb::ServerAddressType::Fixed));
        }
        for f in state.floating_ips_of_port(&p.id) {
            out.push(address(&f.address, pb::ServerAddressType::Floating));
        }
    }
    out
}

pub fn op_state(o: &Operation) -> pb::OperationState {
    match o.state {
        OpState::Running if o.cancel_requested => pb::OperationState::Cancelling,
        OpState::Running => pb::OperationState::Running,
        OpState::Succeeded => pb::OperationState::Succeeded,
        OpState::Failed => pb::OperationState::Failed,
        OpState::Cancelled => pb::OperationState::Cancelled,
        OpState::PartiallySucceeded => pb::OperationState::PartiallySucceeded,
    }
}

fn item_state(s: ItemState) -> pb::OperationState {
    match s {
        ItemState::Pending => pb::OperationState::Pending,
        ItemState::Running => pb::OperationState::Running,
        ItemState::Succeeded => pb::OperationState::Succeeded,
        ItemState::Failed => pb::OperationState::Failed,
        ItemState::Cancelled => pb::OperationState::Cancelled,
    }
}

pub fn action(o: &Operation) -> pb::ServerAction {
    pb::ServerAction {
        action: o.kind.clone(),
        request_id: o.request_id.clone(),
        user_id: o.actor.clone(),
        project_id: o.project_id.clone(),
        start_time_ms: o.started_at_ms,
        finish_time_ms: o.finished_at_ms,
        result: match o.state {
            OpState::Running => pb::ServerActionResult::InProgress,
            OpState::Succeeded => pb::ServerActionResult::Success,
            OpState::Failed | OpState::PartiallySucceeded => pb::ServerActionResult::Error,
            OpState::Cancelled => pb::ServerActionResult::Cancelled,
        } as i32,
        message: o.message.clone(),
        operation_id: o.id.clone(),
    }
}

pub fn operation(state: &State, o: &Operation) -> pb::Operation {
    let failed = matches!(o.state, OpState::Failed | OpState::Cancelled);
    pb::Operation {
        id: o.id.clone(),
        kind: o.kind.clone(),
        resource_type: o.resource_type.clone(),
        resource_id: o.resource_id.clone(),
        project_id: o.project_id.clone(),
        user_id: o.actor.clone(),
        request_id: o.request_id.clone(),
        state: op_state(o) as i32,
        step: o.step.clone(),
        progress: o.progress.as_ref().map(|p| pb::OperationProgress {
            phase: p.phase.clone(),
            percent: p.percent,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
        }),
        message: if failed {
            String::new()
        } else {
            o.message.clone()
        },
        error: if failed {
            o.message.clone()
        } else {
            String::new()
        },
        cancellable: crate::state::cancellable(o),
        started_at_ms: o.started_at_ms,
        finished_at_ms: o.finished_at_ms,
        items: o
            .items
            .iter()
            .map(|i| pb::OperationItemResult {
                resource_id: i.server_id.clone(),
                resource_name: i.server_name.clone(),
                state: item_state(i.state) as i32,
                message: i.message.clone(),
                destination: state
                    .host(&i.destination_host_id)
                    .map(|h| h.info.hostname.clone())
                    .unwrap_or_default(),
                operation_id: i.operation_id.clone(),
            })
            .collect(),
        parent_id: o.parent_id.clone(),
        meta: Some(meta(&o.meta)),
    }
}

pub fn host(state: &State, h: &Host, now_ms: i64) -> pb::Host {
    let _ = now_ms;
    let servers = state.server_count(&h.id);
    let cap = |c: crate::state::Capacity| pb::HostCapacity {
        vcpus: c.vcpus as u32,
        ram_mib: c.ram_mib,
        disk_gib: c.disk_gib,
    };
    pb::Host {
        id: h.id.clone(),
        hostname: h.info.hostname.clone(),
        address: h.info.address.clone(),
        tunnel_address: h.info.tunnel_endpoint().to_string(),
        state: host_state(h) as i32,
        down_since_ms: h.down_since_ms,
        enabled: h.enabled,
        disabled_reason: h.disabled_reason.clone(),
        forced_down: h.forced_down,
        availability_zone: h.info.availability_zone.clone(),
        hypervisor_type: h.info.hypervisor_type.clone(),
        hypervisor_version: h.info.hypervisor_version.clone(),
        cpu_model: h.info.cpu_model.clone(),
        capacity: Some(cap(h.info.capacity)),
        usage: Some(cap(h.used)),
        allocation_ratios: None,
        lease_age_ms: -1,
        agent_version: h.info.agent_version.clone(),
        server_count: servers as u32,
        meta: Some(meta(&h.meta)),
    }
}
