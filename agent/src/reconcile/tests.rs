//! Planner tests by their outputs: a table of situations with the exact steps expected, and a
//! tiny pure simulator that applies steps to an `Observed` (checking each step's preconditions)
//! so every plan can be shown to converge: applying it and planning again yields no steps.

use super::*;
use crate::render::domain::{Boot, CpuMode, DiskCache, DiskSpec, Disks, DomainSpec, DomainType};
use PowerState::{Crashed, Paused, Running, ShutOff};

mod randomized;

const A: &str = "00000000-0000-4000-8000-00000000000a";
const B: &str = "00000000-0000-4000-8000-00000000000b";
const C: &str = "00000000-0000-4000-8000-00000000000c";
const D: &str = "00000000-0000-4000-8000-00000000000d";
const GIB: u64 = 1 << 30;

fn layout() -> DiskLayout {
    DiskLayout::new("/var/lib/flotilla/disks")
}

fn image(n: u8) -> BaseImage {
    BaseImage {
        image_id: format!("00000000-0000-4000-9000-{n:012x}"),
        sha256: format!("{n:064x}"),
        format: DiskFormat::Qcow2,
        size_bytes: 20 << 20,
    }
}

/// A server of generation `generation` on image 1, with ephemeral and swap disks if `scratch`.
fn target_with(id: &str, generation: u64, power: Power, scratch: bool) -> Target {
    let disk = |role, size_bytes| DiskSpec {
        path: layout().disk_path(id, generation, role),
        size_bytes,
    };
    let spec = DomainSpec {
        domain_type: DomainType::Qemu,
        cpu: CpuMode::Qemu64,
        server_id: id.to_owned(),
        name: format!("server {id}"),
        generation,
        ram_mib: 256,
        vcpus: 1,
        boot: Boot::Disk,
        disks: Disks {
            root: disk(DiskRole::Root, 10 * GIB),
            ephemeral: scratch.then(|| disk(DiskRole::Ephemeral, 2 * GIB)),
            swap: scratch.then(|| disk(DiskRole::Swap, GIB)),
            cache: DiskCache::Writeback,
        },
        nics: Vec::new(),
        console_log: PathBuf::from(format!("/var/lib/flotilla/console/{id}.log")),
    };
    Target {
        power,
        image: image(1),
        domain: spec.validate().expect("valid fixture"),
    }
}

fn target(id: &str, generation: u64, power: Power) -> Target {
    target_with(id, generation, power, false)
}

fn desired(targets: impl IntoIterator<Item = Target>) -> Desired {
    let mut desired = Desired::new();
    for target in targets {
        desired.keep(target);
    }
    desired
}

/// Builder for observed host states.
#[derive(Clone, Default)]
struct Host(Observed);

impl Host {
    fn domain(mut self, id: &str, power: PowerState, generation: Option<u64>) -> Self {
        self.0.servers.entry(id.to_owned()).or_default().domain =
            Some(ObservedDomain { power, generation });
        self
    }

    fn disks(mut self, id: &str, generation: u64, roles: &[DiskRole]) -> Self {
        let server = self.0.servers.entry(id.to_owned()).or_default();
        server
            .disks
            .entry(generation)
            .or_default()
            .extend(roles.iter().copied());
        self
    }

    fn root(self, id: &str, generation: u64) -> Self {
        self.disks(id, generation, &[DiskRole::Root])
    }

    /// A converged copy: domain and root disk of `generation`.
    fn copy(self, id: &str, power: PowerState, generation: u64) -> Self {
        self.domain(id, power, Some(generation))
            .root(id, generation)
    }

    fn base(mut self, n: u8) -> Self {
        self.0.cached_bases.insert(image(n).sha256);
        self
    }
}

fn id(s: &str) -> String {
    s.to_owned()
}

fn destroy_stale(s: &str, g: Option<u64>) -> Step {
    Step::DestroyStale {
        server_id: id(s),
        found_generation: g,
    }
}

fn undefine_stale(s: &str, g: Option<u64>) -> Step {
    Step::UndefineStale {
        server_id: id(s),
        found_generation: g,
    }
}

fn delete_disks(s: &str, generation: u64) -> Step {
    Step::DeleteDisks {
        server_id: id(s),
        generation,
    }
}

fn fetch(n: u8) -> Step {
    Step::FetchBase { image: image(n) }
}

fn overlay(t: &Target) -> Step {
    let root = &t.domain.spec().disks.root;
    Step::CreateOverlay {
        server_id: id(t.server_id()),
        generation: t.generation(),
        base: t.image.clone(),
        path: root.path.clone(),
        size_bytes: root.size_bytes,
    }
}

fn blank(t: &Target, role: DiskRole) -> Step {
    let (_, disk) = t
        .domain
        .spec()
        .disks
        .iter()
        .find(|(r, _)| *r == role)
        .expect("disk");
    Step::CreateBlankDisk {
        server_id: id(t.server_id()),
        generation: t.generation(),
        role,
        path: disk.path.clone(),
        size_bytes: disk.size_bytes,
    }
}

fn define(t: &Target) -> Step {
    Step::Define {
        server_id: id(t.server_id()),
        domain: Box::new(t.domain.clone()),
    }
}

fn start(s: &str) -> Step {
    Step::Start { server_id: id(s) }
}

fn shutdown(s: &str) -> Step {
    Step::Shutdown { server_id: id(s) }
}

fn destroy(s: &str) -> Step {
    Step::Destroy { server_id: id(s) }
}

fn undefine(s: &str) -> Step {
    Step::Undefine { server_id: id(s) }
}

fn resume(s: &str) -> Step {
    Step::Resume { server_id: id(s) }
}

/// Applies one step to the observed state the way the drivers would, panicking when the step's
/// precondition does not hold (so a plan in the wrong order fails the test).
fn apply(observed: &mut Observed, step: &Step) {
    let server_id = step.server_id().map(str::to_owned);
    let sid = server_id.as_deref();
    match step {
        Step::DestroyStale { .. } | Step::Destroy { .. } | Step::Shutdown { .. } => {
            let domain = server_mut(observed, sid)
                .domain
                .as_mut()
                .unwrap_or_else(|| panic!("{step}: no domain"));
            domain.power = PowerState::ShutOff;
        }
        Step::UndefineStale { .. } | Step::Undefine { .. } => {
            let domain = server_mut(observed, sid)
                .domain
                .take()
                .unwrap_or_else(|| panic!("{step}: no domain"));
            assert_eq!(
                domain.power,
                PowerState::ShutOff,
                "{step}: domain still active"
            );
        }
        Step::DeleteDisks { generation, .. } => {
            let s = server_mut(observed, sid);
            assert!(
                s.domain.is_none_or(|d| d.generation != Some(*generation)),
                "{step}: a domain of that generation is still defined"
            );
            s.disks.remove(generation);
        }
        Step::FetchBase { image } => {
            observed.cached_bases.insert(image.sha256.clone());
        }
        Step::CreateOverlay {
            generation, base, ..
        } => {
            assert!(
                observed.cached_bases.contains(&base.sha256),
                "{step}: base not cached"
            );
            let s = server_mut(observed, sid);
            assert!(
                s.domain.is_none_or(|d| d.power == PowerState::ShutOff),
                "{step}: a disk is created under an active domain"
            );
            s.disks
                .entry(*generation)
                .or_default()
                .insert(DiskRole::Root);
        }
        Step::CreateBlankDisk {
            generation, role, ..
        } => {
            server_mut(observed, sid)
                .disks
                .entry(*generation)
                .or_default()
                .insert(*role);
        }
        Step::Define { domain, .. } => {
            let s = server_mut(observed, sid);
            assert!(s.domain.is_none(), "{step}: a domain is still defined");
            let present = s
                .disks
                .get(&domain.generation())
                .cloned()
                .unwrap_or_default();
            for (role, _) in domain.spec().disks.iter() {
                assert!(
                    present.contains(&role),
                    "{step}: {} disk missing",
                    role.as_str()
                );
            }
            s.domain = Some(ObservedDomain {
                power: PowerState::ShutOff,
                generation: Some(domain.generation()),
            });
        }
        Step::Start { .. } => {
            let s = server_mut(observed, sid);
            let domain = s
                .domain
                .as_mut()
                .unwrap_or_else(|| panic!("{step}: no domain"));
            assert_eq!(domain.power, PowerState::ShutOff, "{step}: not shut off");
            let generation = domain.generation.expect("started copies have a generation");
            assert!(s
                .disks
                .get(&generation)
                .is_some_and(|d| d.contains(&DiskRole::Root)));
            domain.power = PowerState::Running;
        }
        Step::Resume { .. } => {
            let domain = server_mut(observed, sid)
                .domain
                .as_mut()
                .unwrap_or_else(|| panic!("{step}: no domain"));
            assert_eq!(domain.power, PowerState::Paused, "{step}: not paused");
            domain.power = PowerState::Running;
        }
    }
    // A fresh observation lists no server without traces.
    if let Some(server_id) = &server_id {
        if observed
            .servers
            .get(server_id)
            .is_some_and(|s| s.domain.is_none() && s.disks.is_empty())
        {
            observed.servers.remove(server_id);
        }
    }
}

fn server_mut<'o>(observed: &'o mut Observed, server_id: Option<&str>) -> &'o mut ObservedServer {
    observed
        .servers
        .entry(server_id.expect("a server's step").to_owned())
        .or_default()
}

/// Properties every plan has: nothing that needs the lease without one, and every stop or
/// removal of a domain (stale copies above all) before anything that builds or starts (I7).
fn check_plan(steps: &[Step], lease_valid: bool) {
    if !lease_valid {
        for step in steps {
            assert!(!step.needs_lease(), "{step} planned without a lease");
        }
    }
    if let Some(first_build) = steps.iter().position(Step::needs_lease) {
        for step in &steps[first_build..] {
            assert!(step.needs_lease(), "{step} comes after building began");
        }
    }
}

/// Plans, checks, applies, and asserts that planning again (same lease) gives nothing.
fn converge(desired: &Desired, observed: &mut Observed, lease_valid: bool) -> Vec<Step> {
    let steps = plan(desired, observed, lease_valid);
    check_plan(&steps, lease_valid);
    for step in &steps {
        apply(observed, step);
    }
    let again = plan(desired, observed, lease_valid);
    assert!(
        again.is_empty(),
        "not converged after {steps:#?}\nstill planned: {again:#?}"
    );
    steps
}

struct Case {
    name: &'static str,
    desired: Desired,
    observed: Host,
    lease_valid: bool,
    expected: Vec<Step>,
}

fn cases() -> Vec<Case> {
    let a1 = target(A, 1, Power::Running);
    let a3 = target(A, 3, Power::Running);
    let a1_off = target(A, 1, Power::ShutOff);
    let a1_scratch = target_with(A, 1, Power::Running, true);
    let b1 = target(B, 1, Power::Running);
    let b2 = target(B, 2, Power::Running);
    let c1 = target(C, 1, Power::Running);
    let mut deleted_a = Desired::new();
    deleted_a.delete(A);
    let mut held = desired([b1.clone()]);
    held.hold(A);
    vec![
        Case {
            name: "fresh boot fetches the base first",
            desired: desired([a1.clone()]),
            observed: Host::default(),
            lease_valid: true,
            expected: vec![fetch(1), overlay(&a1), define(&a1), start(A)],
        },
        Case {
            name: "fresh boot on a cached base",
            desired: desired([a1.clone()]),
            observed: Host::default().base(1),
            lease_valid: true,
            expected: vec![overlay(&a1), define(&a1), start(A)],
        },
        Case {
            name: "restart mid-boot: overlay made, domain not defined yet",
            desired: desired([a1.clone()]),
            observed: Host::default().base(1).root(A, 1),
            lease_valid: true,
            expected: vec![define(&a1), start(A)],
        },
        Case {
            name: "restart mid-boot with the base evicted from the cache",
            desired: desired([a1.clone()]),
            observed: Host::default().root(A, 1),
            lease_valid: true,
            expected: vec![fetch(1), define(&a1), start(A)],
        },
        Case {
            name: "restart mid-boot: defined but not started",
            desired: desired([a1.clone()]),
            observed: Host::default().base(1).copy(A, ShutOff, 1),
            lease_valid: true,
            expected: vec![start(A)],
        },
        Case {
            name: "running copy of the right generation is adopted as is",
            desired: desired([a1.clone()]),
            observed: Host::default().base(1).copy(A, Running, 1),
            lease_valid: true,
            expected: vec![],
        },
        Case {
            name: "missing scratch disks are created before define",
            desired: desired([a1_scratch.clone()]),
            observed: Host::default()
                .base(1)
                .disks(A, 1, &[DiskRole::Root, DiskRole::Ephemeral]),
            lease_valid: true,
            expected: vec![
                blank(&a1_scratch, DiskRole::Swap),
                define(&a1_scratch),
                start(A),
            ],
        },
        Case {
            name: "no disk is created under a running domain",
            desired: desired([a1_scratch.clone()]),
            observed: Host::default().base(1).copy(A, Running, 1),
            lease_valid: true,
            expected: vec![],
        },
        Case {
            name: "disk vanished under a stopped domain is recreated before the start",
            desired: desired([a1_scratch.clone()]),
            observed: Host::default()
                .base(1)
                .domain(A, ShutOff, Some(1))
                .root(A, 1),
            lease_valid: true,
            expected: vec![
                blank(&a1_scratch, DiskRole::Ephemeral),
                blank(&a1_scratch, DiskRole::Swap),
                start(A),
            ],
        },
        Case {
            name: "disk vanished under a domain being stopped is recreated after the shutdown",
            desired: desired([a1_off.clone()]),
            observed: Host::default().base(1).domain(A, Running, Some(1)),
            lease_valid: true,
            expected: vec![shutdown(A), overlay(&a1_off)],
        },
        Case {
            name: "stopped server is built but not started",
            desired: desired([a1_off.clone()]),
            observed: Host::default().base(1),
            lease_valid: true,
            expected: vec![overlay(&a1_off), define(&a1_off)],
        },
        Case {
            name: "stop: graceful shutdown",
            desired: desired([a1_off.clone()]),
            observed: Host::default().base(1).copy(A, Running, 1),
            lease_valid: true,
            expected: vec![shutdown(A)],
        },
        Case {
            name: "paused server that should be off is destroyed",
            desired: desired([a1_off.clone()]),
            observed: Host::default().base(1).copy(A, Paused, 1),
            lease_valid: true,
            expected: vec![destroy(A)],
        },
        Case {
            name: "paused server that should run is resumed",
            desired: desired([a1.clone()]),
            observed: Host::default().base(1).copy(A, Paused, 1),
            lease_valid: true,
            expected: vec![resume(A)],
        },
        Case {
            name: "crashed server is destroyed then started",
            desired: desired([a1.clone()]),
            observed: Host::default().base(1).copy(A, Crashed, 1),
            lease_valid: true,
            expected: vec![destroy(A), start(A)],
        },
        Case {
            name: "evacuated server on a returning host: stale copy removed",
            desired: desired([]),
            observed: Host::default().base(1).copy(A, Running, 1),
            lease_valid: true,
            expected: vec![
                destroy_stale(A, Some(1)),
                undefine_stale(A, Some(1)),
                delete_disks(A, 1),
            ],
        },
        Case {
            name: "stale generation replaced by the current one",
            desired: desired([a3.clone()]),
            observed: Host::default().base(1).copy(A, Running, 1),
            lease_valid: true,
            expected: vec![
                destroy_stale(A, Some(1)),
                undefine_stale(A, Some(1)),
                delete_disks(A, 1),
                overlay(&a3),
                define(&a3),
                start(A),
            ],
        },
        Case {
            name: "domain with unreadable generation is stale, current disks are kept",
            desired: desired([a1.clone()]),
            observed: Host::default().base(1).domain(A, Running, None).root(A, 1),
            lease_valid: true,
            expected: vec![
                destroy_stale(A, None),
                undefine_stale(A, None),
                define(&a1),
                start(A),
            ],
        },
        Case {
            name: "stale copies on the host are destroyed before anything starts",
            desired: desired([a1.clone(), c1.clone()]),
            observed: Host::default()
                .base(1)
                .copy(B, Running, 4)
                .domain(D, Paused, Some(2)),
            lease_valid: true,
            expected: vec![
                destroy_stale(B, Some(4)),
                undefine_stale(B, Some(4)),
                destroy_stale(D, Some(2)),
                undefine_stale(D, Some(2)),
                delete_disks(B, 4),
                overlay(&a1),
                define(&a1),
                overlay(&c1),
                define(&c1),
                start(A),
                start(C),
            ],
        },
        Case {
            name: "unknown shut-off domain is undefined without a destroy",
            desired: desired([]),
            observed: Host::default().domain(A, ShutOff, Some(9)),
            lease_valid: true,
            expected: vec![undefine_stale(A, Some(9))],
        },
        Case {
            name: "unknown leftover disks are deleted",
            desired: desired([b2.clone()]),
            observed: Host::default()
                .base(1)
                .root(A, 1)
                .disks(B, 1, &[DiskRole::Root])
                .copy(B, Running, 2),
            lease_valid: true,
            expected: vec![delete_disks(A, 1), delete_disks(B, 1)],
        },
        Case {
            name: "lease expired: stale copies are destroyed, nothing starts",
            desired: desired([a1.clone()]),
            observed: Host::default().base(1).copy(B, Running, 1).root(A, 1),
            lease_valid: false,
            expected: vec![destroy_stale(B, Some(1)), undefine_stale(B, Some(1))],
        },
        Case {
            name: "lease expired: stopping is allowed, running copies keep running",
            desired: desired([a1_off.clone(), b1.clone()]),
            observed: Host::default()
                .base(1)
                .copy(A, Running, 1)
                .copy(B, Running, 1),
            lease_valid: false,
            expected: vec![shutdown(A)],
        },
        Case {
            name: "lease expired: a paused server is not resumed",
            desired: desired([a1.clone()]),
            observed: Host::default().base(1).copy(A, Paused, 1),
            lease_valid: false,
            expected: vec![],
        },
        Case {
            name: "deleted server: destroyed, undefined, disks deleted",
            desired: deleted_a.clone(),
            observed: Host::default().base(1).copy(A, Running, 1),
            lease_valid: true,
            expected: vec![destroy(A), undefine(A), delete_disks(A, 1)],
        },
        Case {
            name: "deleted server without a lease: disks wait for the lease",
            desired: deleted_a.clone(),
            observed: Host::default().base(1).copy(A, Running, 1),
            lease_valid: false,
            expected: vec![destroy(A), undefine(A)],
        },
        Case {
            name: "deleted server already gone",
            desired: deleted_a,
            observed: Host::default().base(1),
            lease_valid: true,
            expected: vec![],
        },
        Case {
            name: "held server is left to its operation",
            desired: held,
            observed: Host::default()
                .base(1)
                .domain(A, Paused, Some(5))
                .copy(B, Running, 1),
            lease_valid: true,
            expected: vec![],
        },
        Case {
            name: "servers on one base share one fetch",
            desired: desired([a1.clone(), b1.clone()]),
            observed: Host::default(),
            lease_valid: true,
            expected: vec![
                fetch(1),
                overlay(&a1),
                define(&a1),
                overlay(&b1),
                define(&b1),
                start(A),
                start(B),
            ],
        },
    ]
}

#[test]
fn table_of_situations_gives_the_expected_steps() {
    for case in cases() {
        let steps = plan(&case.desired, &case.observed.0, case.lease_valid);
        assert_eq!(steps, case.expected, "{}", case.name);
        check_plan(&steps, case.lease_valid);
    }
}

#[test]
fn every_plan_in_the_table_converges() {
    for case in cases() {
        let mut observed = case.observed.0.clone();
        converge(&case.desired, &mut observed, case.lease_valid);
        if !case.lease_valid {
            // The lease comes back: the deferred work happens, then nothing is left.
            converge(&case.desired, &mut observed, true);
        }
    }
}

#[test]
fn lease_expiry_then_renewal_finishes_the_evacuation_cleanup() {
    let a3 = target(A, 3, Power::Running);
    let desired = desired([a3.clone()]);
    let mut observed = Host::default().base(1).copy(A, Running, 1).0;
    let fenced = converge(&desired, &mut observed, false);
    assert_eq!(
        fenced,
        [destroy_stale(A, Some(1)), undefine_stale(A, Some(1))]
    );
    let rest = converge(&desired, &mut observed, true);
    assert_eq!(
        rest,
        [delete_disks(A, 1), overlay(&a3), define(&a3), start(A)]
    );
    let server = &observed.servers[A];
    assert_eq!(
        server.domain,
        Some(ObservedDomain {
            power: Running,
            generation: Some(3)
        })
    );
    assert_eq!(server.disks.keys().copied().collect::<Vec<_>>(), [3]);
}

#[test]
fn only_stopping_and_removing_domains_goes_without_a_lease() {
    let a1 = target(A, 1, Power::Running);
    let free = [
        destroy_stale(A, None),
        undefine_stale(A, None),
        shutdown(A),
        destroy(A),
        undefine(A),
    ];
    for step in free {
        assert!(!step.needs_lease(), "{step}");
    }
    let gated = [
        delete_disks(A, 1),
        fetch(1),
        overlay(&a1),
        define(&a1),
        start(A),
        resume(A),
    ];
    for step in gated {
        assert!(step.needs_lease(), "{step}");
    }
}

#[test]
fn steps_name_their_server_and_read_well() {
    let a1 = target(A, 1, Power::Running);
    assert_eq!(start(A).server_id(), Some(A));
    assert_eq!(fetch(1).server_id(), None);
    assert_eq!(
        destroy_stale(A, Some(2)).to_string(),
        format!("destroy stale copy of {A} (generation 2)")
    );
    assert_eq!(
        undefine_stale(A, None).to_string(),
        format!("undefine stale copy of {A} (unknown generation)")
    );
    assert_eq!(
        define(&a1).to_string(),
        format!("define {A} (generation 1)")
    );
    assert_eq!(
        overlay(&a1).to_string(),
        format!("create root overlay of {A} at /var/lib/flotilla/disks/{A}/1/root.qcow2")
    );
}

#[test]
fn disk_layout_round_trips_and_ignores_foreign_files() {
    let layout = layout();
    for role in DiskRole::ALL {
        let path = layout.disk_path(A, 12, role);
        assert_eq!(layout.parse(&path), Some((A.to_owned(), 12, role)));
    }
    assert_eq!(
        layout.disk_path(A, 3, DiskRole::Swap),
        PathBuf::from(format!("/var/lib/flotilla/disks/{A}/3/swap.qcow2"))
    );
    assert_eq!(
        layout.generation_dir(A, 3),
        PathBuf::from(format!("/var/lib/flotilla/disks/{A}/3"))
    );
    for foreign in [
        format!("/var/lib/flotilla/disks/{A}/3/root.qcow2.part"),
        format!("/var/lib/flotilla/disks/{A}/03/root.qcow2"),
        format!("/var/lib/flotilla/disks/{A}/+3/root.qcow2"),
        format!("/var/lib/flotilla/disks/{A}/x/root.qcow2"),
        format!("/var/lib/flotilla/disks/{A}/3/sub/root.qcow2"),
        format!("/var/lib/flotilla/disks/{A}/root.qcow2"),
        "/var/lib/flotilla/disks/web-1/3/root.qcow2".to_owned(),
        format!("/elsewhere/{A}/3/root.qcow2"),
    ] {
        assert_eq!(layout.parse(Path::new(&foreign)), None, "{foreign}");
    }
    assert_eq!(
        layout.parse(&layout.disk_path(B, 0, DiskRole::Root)),
        Some((B.to_owned(), 0, DiskRole::Root))
    );
}

#[test]
fn migrated_in_copies_are_adopted_and_powered_as_desired_never_redefined() {
    let a2 = target(A, 2, Power::Running);
    let a2_off = target(A, 2, Power::ShutOff);
    // Arrived paused (cold migration) with the disks PrepareMigration made.
    let paused = Host::default().base(1).copy(A, Paused, 2);
    // While incoming, the migration owns it: nothing is planned.
    let mut incoming = Desired::new();
    incoming.hold(A);
    assert_eq!(plan(&incoming, &paused.0, true), vec![]);
    // Ownership moved and the server should run: resuming it is its cold boot.
    assert_eq!(
        plan(&desired([a2.clone()]), &paused.0, true),
        vec![resume(A)]
    );
    // It should stay off: the paused domain is destroyed (its CPUs never ran here).
    let steps = plan(&desired([a2_off.clone()]), &paused.0, true);
    assert_eq!(steps, vec![destroy(A)]);
    let mut observed = paused.0.clone();
    converge(&desired([a2_off]), &mut observed, true);
    // Arrived running (live migration): adopted as it is.
    let running = Host::default().base(1).copy(A, Running, 2);
    assert_eq!(plan(&desired([a2.clone()]), &running.0, true), vec![]);
    // Leftover disks of the generation it had here before are stale.
    let with_old = Host::default().base(1).copy(A, Running, 2).root(A, 1);
    assert_eq!(
        plan(&desired([a2]), &with_old.0, true),
        vec![delete_disks(A, 1)]
    );
}

#[test]
fn a_fenced_host_resumes_what_it_still_owns_and_destroys_what_moved_away() {
    // The host paused every guest when its lease lapsed (I7 self-fencing). Meanwhile B was
    // evacuated (no longer listed here), C was stopped, and A is still desired running.
    let a1 = target(A, 1, Power::Running);
    let c1_off = target(C, 1, Power::ShutOff);
    let desired = desired([a1.clone(), c1_off]);
    let mut observed = Host::default()
        .base(1)
        .copy(A, Paused, 1)
        .copy(B, Paused, 1)
        .copy(C, Paused, 1)
        .0;
    // Still without a lease: only stopping and removing, never a resume.
    let fenced = plan(&desired, &observed, false);
    assert!(!fenced.contains(&resume(A)), "{fenced:?}");
    assert!(fenced.iter().all(|s| !s.needs_lease()), "{fenced:?}");
    // With the lease again: A runs on, B's leftovers go, C stays off.
    let steps = converge(&desired, &mut observed, true);
    assert!(steps.contains(&resume(A)), "{steps:?}");
    assert!(
        steps.contains(&destroy(B)) || steps.contains(&destroy_stale(B, Some(1))),
        "{steps:?}"
    );
    assert!(steps.contains(&destroy(C)), "{steps:?}");
    let power = |id: &str| {
        observed
            .servers
            .get(id)
            .and_then(|s| s.domain)
            .map(|d| d.power)
    };
    assert_eq!(power(A), Some(Running));
    assert_eq!(power(B), None, "the evacuated copy is removed");
    assert_eq!(power(C), Some(ShutOff));
}
