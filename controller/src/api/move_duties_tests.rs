//! A host holding 1,000 servers dies and is evacuated, driven by the leader's duties and fake
//! agents that boot whatever their desired state lists, all in process: every server ends
//! ACTIVE on exactly one healthy host at generation 2, no host is ever overbooked (I3), and the
//! job never runs more items at once than its parallelism.
use std::collections::BTreeMap;

use crate::api::agent_hub::duties;
use crate::api::agents::desired_state;
use crate::api::test_fixtures::{registration, stored_image};
use crate::scheduler::AllocationRatios;
use crate::state::*;

struct Sim {
    state: State,
    index: u64,
}

impl Sim {
    fn apply(&mut self, command: Command) -> Outcome {
        self.index += 1;
        let env = Envelope {
            request_id: String::new(),
            actor: "sim".into(),
            time_ms: 1_000 + self.index as i64,
            command,
        };
        self.state.apply(self.index, &env)
    }

    fn ok(&mut self, command: Command) -> Outcome {
        let out = self.apply(command);
        assert!(!matches!(out, Outcome::Rejected(_)), "{out:?}");
        out
    }

    /// A fake agent on `host` runs everything its desired state lists (not incoming ones).
    fn agent_reports(&mut self, host: &str) {
        let desired = desired_state(&self.state, host);
        let lease_id = self.state.host(host).unwrap().lease_id;
        let servers = desired
            .servers
            .iter()
            .filter(|s| !s.incoming_migration)
            .map(|s| ObservedServer {
                id: s.id.clone(),
                power: PowerState::Running,
                generation: s.placement_generation,
                error: String::new(),
            })
            .collect();
        self.ok(Command::ServerObserved {
            host_id: host.into(),
            lease_id,
            servers,
        });
    }
}

fn register(sim: &mut Sim, id: &str, vcpus: u64) {
    sim.ok(Command::RegisterHost {
        host_id: id.into(),
        info: registration(
            id,
            "127.0.0.1",
            Capacity::new(vcpus, vcpus * 1024, vcpus * 10),
        ),
    });
}

#[test]
fn evacuating_a_host_with_1000_servers_places_each_once_within_capacity_and_parallelism() {
    const SERVERS: usize = 1000;
    const PARALLEL: u32 = 50;
    let ratios = AllocationRatios {
        cpu: 1.0,
        ram: 1.0,
        disk: 1.0,
    };
    let mut sim = Sim {
        state: State::new(),
        index: 0,
    };
    sim.ok(Command::CreateProject {
        id: "p".into(),
        name: "p".into(),
        description: String::new(),
        enabled: true,
        properties: BTreeMap::new(),
    });
    sim.ok(Command::SetQuota {
        project: "p".into(),
        reset_to_default: vec![],
        changes: [
            (Resource::Instances, UNLIMITED),
            (Resource::Vcpus, UNLIMITED),
            (Resource::RamMib, UNLIMITED),
            (Resource::DiskGib, UNLIMITED),
        ]
        .into_iter()
        .collect(),
    });
    for cmd in stored_image("img", "p", DiskFormat::Raw, Visibility::Private, 1 << 20) {
        sim.ok(cmd);
    }
    register(&mut sim, "dead", SERVERS as u64);
    // 12 healthy hosts of 90 vCPUs: 1,080 slots for 1,000 one-vCPU servers.
    let healthy: Vec<String> = (0..12).map(|i| format!("h{i:02}")).collect();
    for h in &healthy {
        register(&mut sim, h, 90);
    }
    let flavor = FlavorSnapshot {
        id: "f".into(),
        name: "f".into(),
        vcpus: 1,
        ram_mib: 1024,
        disk_gib: 1,
        ephemeral_gib: 0,
        swap_mib: 0,
        extra_specs: BTreeMap::new(),
    };
    let new: Vec<NewServer> = (0..SERVERS)
        .map(|i| NewServer {
            id: format!("s{i:04}"),
            name: format!("vm-{i}"),
            project_id: "p".into(),
            user_id: "u".into(),
            flavor: flavor.clone(),
            image_id: "img".into(),
            host_id: "dead".into(),
            availability_zone: String::new(),
            metadata: BTreeMap::new(),
            user_data: vec![],
            operation_id: format!("boot-{i}"),
            group_id: String::new(),
        })
        .collect();
    sim.ok(Command::CreateServers {
        servers: new,
        ratios,
    });
    sim.agent_reports("dead");
    assert!(sim
        .state
        .servers()
        .all(|s| s.status == ServerStatus::Active));
    let lease_id = sim.state.host("dead").unwrap().lease_id;
    sim.ok(Command::MarkHostDown {
        host_id: "dead".into(),
        lease_id,
    });
    sim.ok(Command::StartHostJob {
        operation_id: "job".into(),
        host_id: "dead".into(),
        job: HostJob {
            drain: false,
            live: false,
            parallel: PARALLEL,
            target_host_id: String::new(),
            timeout_seconds: 60,
            ratios,
        },
    });

    let mut rounds = 0;
    while !sim.state.operation("job").unwrap().state.finished() {
        rounds += 1;
        assert!(rounds < 200, "the evacuation does not progress");
        for (op, starts) in duties(&sim.state, &ratios).advance {
            sim.ok(Command::AdvanceHostJob {
                operation_id: op,
                starts,
            });
        }
        let running = sim.state.operation("job").unwrap().items.iter();
        let running = running.filter(|i| i.state == ItemState::Running).count();
        assert!(running <= PARALLEL as usize, "{running} at once");
        for h in &healthy {
            sim.agent_reports(h);
            let host = sim.state.host(h).unwrap();
            assert!(
                host.used.vcpus <= host.info.capacity.vcpus,
                "{h} overbooked"
            );
        }
    }
    let op = sim.state.operation("job").unwrap();
    assert_eq!(op.state, OpState::Succeeded, "{}", op.message);
    assert_eq!(op.message, "1000 of 1000 servers moved");
    assert!(rounds >= SERVERS / PARALLEL as usize, "{rounds} rounds");
    for s in sim.state.servers() {
        assert_eq!(s.status, ServerStatus::Active);
        assert_eq!(s.placement_generation, 2);
        assert_ne!(s.host_id, "dead");
    }
    let placed: usize = healthy.iter().map(|h| sim.state.server_count(h)).sum();
    assert_eq!(placed, SERVERS, "each server on exactly one host");
    assert_eq!(sim.state.host("dead").unwrap().used, Capacity::default());
    // The dead host, if it came back, would be told to hold nothing.
    assert!(desired_state(&sim.state, "dead").servers.is_empty());
}
