//! Moving servers, from the leader's side (pure functions of a state snapshot): where servers
//! leaving a host should go, the agent commands each migration step needs, and which items of
//! host evacuations and drains start next.
use flotilla_proto::v1 as pb;

use super::agent_hub::Duties;
use crate::scheduler::{self, AllocationRatios, HostView};
use crate::state::{ItemStart, ItemState, Operation, Server, State};

pub const PREPARE: &str = "prepare_destination";
pub const MIGRATE: &str = "migrate";
pub const ABORT: &str = "abort_migration";

/// Steps whose results are [`crate::state::Command::MigrationStep`]s.
pub fn is_migration_step(step: &str) -> bool {
    matches!(step, PREPARE | MIGRATE | ABORT)
}

/// How one server leaves its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Rebuild,
    Live,
    Cold,
}

impl Method {
    pub fn from_name(name: &str) -> Method {
        match name {
            "rebuild" => Method::Rebuild,
            "live_migrate" => Method::Live,
            _ => Method::Cold,
        }
    }
}

/// Destinations for servers leaving their host, placed one after another so each sees the
/// claims of those before it. `target` restricts every server to that host.
pub fn plan(
    state: &State,
    ratios: &AllocationRatios,
    servers: &[(&Server, Method)],
    target: Option<&str>,
) -> Vec<Result<String, String>> {
    let mut hosts: Vec<HostView> = state.hosts().map(crate::state::host_view).collect();
    servers
        .iter()
        .map(|(s, method)| {
            let image = state
                .image(&s.image.id)
                .ok_or_else(|| format!("its image {} is gone", s.image.id))?;
            let mut request = crate::state::placement_request(&s.flavor, image);
            request.group = state.server_group_view_for(s);
            request.exclude_hosts.insert(s.host_id.clone());
            request.availability_zone =
                (!s.availability_zone.is_empty()).then(|| s.availability_zone.clone());
            if *method == Method::Live {
                request.hypervisor_type = state
                    .host(&s.host_id)
                    .map(|h| h.info.hypervisor_type.clone());
            }
            request.forced_host = target.map(str::to_owned);
            let chosen = scheduler::place(&hosts, ratios, &request)
                .map_err(|e| e.to_string())?
                .into_iter()
                .next()
                .ok_or_else(|| "the scheduler returned no host".to_owned())?;
            if let Some(h) = hosts.iter_mut().find(|h| h.id == chosen) {
                h.used = h.used.saturating_add(request.claim());
            }
            Ok(chosen)
        })
        .collect()
}

/// Agent commands for the migrations under way, and the next items of host jobs.
pub fn add(state: &State, ratios: &AllocationRatios, duties: &mut Duties) {
    for s in state.migrating_servers() {
        let (Some(m), Some(op)) = (&s.migration, state.operation(&s.current_operation_id)) else {
            continue;
        };
        let address = |id: &str| state.host(id).map(|h| h.info.address.clone());
        let name = |id: &str| state.host(id).map(|h| h.info.hostname.clone());
        let (Some(src_addr), Some(dst_addr)) =
            (address(&m.source_host_id), address(&m.destination_host_id))
        else {
            continue;
        };
        let command = |step: &str, payload| pb::AgentCommand {
            operation_id: op.id.clone(),
            step: step.to_owned(),
            payload: Some(payload),
        };
        use pb::agent_command::Payload;
        match op.step.as_str() {
            PREPARE if !op.cancel_requested => {
                let server =
                    super::agents::desired_server(state, s, m.destination_generation, true);
                let prepare = pb::PrepareMigrationCommand {
                    server: Some(server),
                    source_host: name(&m.source_host_id).unwrap_or_default(),
                    source_address: src_addr,
                    live: m.live,
                };
                duties.commands.push((
                    m.destination_host_id.clone(),
                    command(PREPARE, Payload::PrepareMigration(prepare)),
                ));
            }
            MIGRATE => {
                let destination_host = name(&m.destination_host_id).unwrap_or_default();
                let payload = if m.live {
                    Payload::LiveMigrate(pb::LiveMigrateCommand {
                        server_id: s.id.clone(),
                        destination_host,
                        destination_address: dst_addr,
                        block_migration: m.block_migration,
                        timeout_seconds: m.timeout_seconds,
                        destination_generation: m.destination_generation,
                        destination_domain_xml: m.destination_xml.clone(),
                    })
                } else {
                    Payload::Migrate(pb::MigrateCommand {
                        server_id: s.id.clone(),
                        destination_host,
                        destination_address: dst_addr,
                        destination_domain_xml: m.destination_xml.clone(),
                        destination_generation: m.destination_generation,
                        timeout_seconds: m.timeout_seconds,
                    })
                };
                duties
                    .commands
                    .push((m.source_host_id.clone(), command(MIGRATE, payload)));
                if op.cancel_requested {
                    let abort = pb::AbortMigrationCommand {
                        server_id: s.id.clone(),
                    };
                    duties.commands.push((
                        m.source_host_id.clone(),
                        command(ABORT, Payload::AbortMigration(abort)),
                    ));
                }
            }
            _ => {}
        }
    }
    for op in state.running_operations().filter(|o| o.job.is_some()) {
        let starts = next_items(state, ratios, op);
        if !starts.is_empty() {
            duties.advance.push((op.id.clone(), starts));
        }
    }
}

/// The pending items of a host job that fit in its parallelism now, with destinations.
fn next_items(state: &State, ratios: &AllocationRatios, op: &Operation) -> Vec<ItemStart> {
    let Some(job) = &op.job else {
        return Vec::new();
    };
    if op.cancel_requested {
        return Vec::new();
    }
    let running = op
        .items
        .iter()
        .filter(|i| i.state == ItemState::Running)
        .count();
    let free = (job.parallel as usize).saturating_sub(running);
    let pending: Vec<(usize, &Server, Method)> = op
        .items
        .iter()
        .enumerate()
        .filter(|(_, i)| i.state == ItemState::Pending)
        .filter_map(|(n, i)| {
            state
                .server(&i.server_id)
                .map(|s| (n, s, Method::from_name(&i.method)))
        })
        .take(free)
        .collect();
    let gone = op
        .items
        .iter()
        .filter(|i| i.state == ItemState::Pending && state.server(&i.server_id).is_none());
    let mut starts: Vec<ItemStart> = gone
        .take(free)
        .map(|i| ItemStart {
            server_id: i.server_id.clone(),
            host_id: String::new(),
            no_host_reason: "the server was deleted".into(),
            operation_id: String::new(),
        })
        .collect();
    let movers: Vec<(&Server, Method)> = pending.iter().map(|(_, s, m)| (*s, *m)).collect();
    let target = (!job.target_host_id.is_empty()).then_some(job.target_host_id.as_str());
    let ratios = if job.ratios == AllocationRatios::default() {
        ratios
    } else {
        &job.ratios
    };
    for ((n, s, _), dest) in pending.iter().zip(plan(state, ratios, &movers, target)) {
        let (host_id, no_host_reason) = match dest {
            Ok(h) => (h, String::new()),
            Err(why) => (String::new(), why),
        };
        starts.push(ItemStart {
            server_id: s.id.clone(),
            host_id,
            no_host_reason,
            operation_id: format!("{}-{n}", op.id),
        });
    }
    starts
}

#[cfg(test)]
#[path = "move_duties_tests.rs"]
mod tests;
