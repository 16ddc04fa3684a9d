//! Scheduler unit tests, by what `place`, `fits` and `validate_request` return.
use super::*;

/// An up, enabled KVM host in `az-1` with nothing placed on it.
pub(super) fn host(name: &str, vcpus: u64, ram_mib: u64, disk_gib: u64) -> HostView {
    HostView {
        id: format!("id-{name}"),
        name: name.to_string(),
        up: true,
        enabled: true,
        disabled_reason: String::new(),
        availability_zone: "az-1".to_string(),
        capacity: Resources::new(vcpus, ram_mib, disk_gib),
        used: Resources::default(),
        hypervisor_type: "kvm".to_string(),
    }
}

fn with_used(mut h: HostView, vcpus: u64, ram_mib: u64, disk_gib: u64) -> HostView {
    h.used = Resources::new(vcpus, ram_mib, disk_gib);
    h
}

fn request(vcpus: u32, ram_mib: u64, root_gib: u64) -> PlacementRequest {
    PlacementRequest::new(FlavorSize {
        vcpus,
        ram_mib,
        root_gib,
        ephemeral_gib: 0,
        swap_mib: 0,
    })
}

fn count(mut r: PlacementRequest, n: u32) -> PlacementRequest {
    r.count = n;
    r
}

fn grouped(mut r: PlacementRequest, policy: GroupPolicy, members: &[&str]) -> PlacementRequest {
    r.group = Some(ServerGroupView {
        id: "group-id".to_string(),
        name: "web".to_string(),
        policy,
        member_hosts: members.iter().map(|m| format!("id-{m}")).collect(),
    });
    r
}

/// 1:1 ratios so capacities read as written.
fn flat() -> AllocationRatios {
    AllocationRatios {
        cpu: 1.0,
        ram: 1.0,
        disk: 1.0,
    }
}

fn ids(names: &[&str]) -> Vec<HostId> {
    names.iter().map(|n| format!("id-{n}")).collect()
}

fn no_valid_host(result: Result<Vec<HostId>, ScheduleError>) -> NoValidHost {
    match result {
        Err(ScheduleError::NoValidHost(e)) => e,
        other => panic!("expected NoValidHost, got {other:?}"),
    }
}

fn invalid(result: Result<Vec<HostId>, ScheduleError>) -> InvalidRequest {
    match result {
        Err(ScheduleError::InvalidRequest(e)) => e,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

// ---- filters -------------------------------------------------------------------------------

#[test]
fn down_and_disabled_hosts_are_never_chosen() {
    let mut down = host("a", 8, 8192, 100);
    down.up = false;
    let mut disabled = host("b", 8, 8192, 100);
    disabled.enabled = false;
    let hosts = [down, disabled, host("c", 2, 2048, 20)];
    assert_eq!(
        place(&hosts, &flat(), &request(1, 512, 1)).unwrap(),
        ids(&["c"])
    );
}

#[test]
fn availability_zone_restricts_candidates() {
    let mut other = host("a", 64, 65536, 1000);
    other.availability_zone = "az-2".into();
    let hosts = [other, host("b", 2, 2048, 20)];
    let mut r = request(1, 512, 1);
    r.availability_zone = Some("az-1".into());
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), ids(&["b"]));
    r.availability_zone = Some("az-3".into());
    let e = no_valid_host(place(&hosts, &flat(), &r));
    assert_eq!(
        e.to_string(),
        "no valid host among 2 hosts: 2 not in availability zone az-3 (a: az-2, b: az-1)"
    );
}

#[test]
fn hypervisor_type_filter_ignores_case() {
    let mut xen = host("a", 64, 65536, 1000);
    xen.hypervisor_type = "xen".into();
    let hosts = [xen, host("b", 2, 2048, 20)];
    let mut r = request(1, 512, 1);
    r.hypervisor_type = Some("KVM".into());
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), ids(&["b"]));
}

#[test]
fn each_resource_is_checked_against_capacity() {
    let hosts = [
        host("cpu-poor", 1, 65536, 1000),
        host("ram-poor", 64, 1024, 1000),
        host("disk-poor", 64, 65536, 5),
    ];
    let e = no_valid_host(place(&hosts, &flat(), &request(2, 2048, 10)));
    assert_eq!(
        e.to_string(),
        "no valid host among 3 hosts: \
         1 lacks vCPUs (cpu-poor: needs 2 vCPUs, free 1 vCPU), \
         1 lacks RAM (ram-poor: needs 2048 MiB, free 1024 MiB), \
         1 lacks disk (disk-poor: needs 10 GiB, free 5 GiB)"
    );
}

#[test]
fn allocation_ratios_scale_capacity() {
    let h = host("a", 4, 4096, 100);
    let r = request(8, 6144, 100);
    let ratios = AllocationRatios {
        cpu: 2.0,
        ram: 1.5,
        disk: 1.0,
    };
    assert_eq!(fits(&h, &ratios, &r), Ok(()));
    assert_eq!(ratios.limits(h.capacity), Resources::new(8, 6144, 100));
    // One more vCPU, MiB or GiB than capacity × ratio is refused.
    for (vcpus, ram, disk, resource) in [
        (9, 6144, 100, Resource::Vcpus),
        (8, 6145, 100, Resource::Ram),
        (8, 6144, 101, Resource::Disk),
    ] {
        match fits(&h, &ratios, &request(vcpus, ram, disk)) {
            Err(Reason::Insufficient { shortfalls, .. }) => {
                assert_eq!(shortfalls.len(), 1);
                assert_eq!(shortfalls[0].resource, resource);
            }
            other => panic!("expected a {resource:?} shortfall, got {other:?}"),
        }
    }
}

#[test]
fn default_ratios_are_novas() {
    let d = AllocationRatios::default();
    assert_eq!((d.cpu, d.ram, d.disk), (16.0, 1.5, 1.0));
    assert_eq!(
        d.limits(Resources::new(16, 16384, 500)),
        Resources::new(256, 24576, 500)
    );
}

#[test]
fn ratio_arithmetic_is_exact_in_fixed_point() {
    // 100 × 1.15 is 114.999… in floating point.
    let ratios = AllocationRatios {
        cpu: 1.15,
        ram: 1.1,
        disk: 0.9,
    };
    assert_eq!(
        ratios.limits(Resources::new(100, 1000, 10)),
        Resources::new(115, 1100, 9)
    );
}

#[test]
fn invalid_ratios_are_refused_by_validate_and_allow_nothing() {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1000.5] {
        let ratios = AllocationRatios {
            ram: bad,
            ..Default::default()
        };
        assert_eq!(ratios.validate().unwrap_err().name, "ram");
        if bad.is_nan() || bad <= 0.0 {
            assert_eq!(ratios.limits(Resources::new(8, 8192, 80)).ram_mib, 0);
        }
    }
    assert!(AllocationRatios::default().validate().is_ok());
    let e = AllocationRatios {
        cpu: 0.0,
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the cpu allocation ratio must be a number from 0.000001 to 1000, not 0"
    );
}

#[test]
fn usage_above_a_lowered_ratio_leaves_nothing_free() {
    let h = with_used(host("a", 4, 4096, 100), 70, 1024, 10);
    match fits(&h, &AllocationRatios::default(), &request(1, 512, 1)) {
        Err(Reason::Insufficient { shortfalls, .. }) => assert_eq!(
            shortfalls,
            vec![Shortfall {
                resource: Resource::Vcpus,
                needed: 1,
                free: 0,
                limit: 64
            }]
        ),
        other => panic!("expected no free vCPUs, got {other:?}"),
    }
}

#[test]
fn excluded_hosts_are_skipped_on_reschedule() {
    let hosts = [host("a", 8, 8192, 100), host("b", 2, 2048, 20)];
    let mut r = request(1, 512, 1);
    r.exclude_hosts.insert("id-a".into());
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), ids(&["b"]));
    r.exclude_hosts.insert("id-b".into());
    assert_eq!(
        no_valid_host(place(&hosts, &flat(), &r)).to_string(),
        "no valid host among 2 hosts: 2 excluded after a failed boot attempt (a, b)"
    );
}

// ---- the request itself ----------------------------------------------------------------------

#[test]
fn flavor_smaller_than_the_image_is_a_request_error() {
    let hosts = [host("a", 8, 8192, 100)];
    let mut r = request(1, 512, 1);
    r.image.min_disk_gib = 2;
    let e = invalid(place(&hosts, &flat(), &r));
    assert_eq!(
        e.to_string(),
        "flavor disk 1 GiB is smaller than the image's min_disk 2 GiB"
    );

    let mut r = request(1, 512, 1);
    r.image.min_ram_mib = 1024;
    assert_eq!(
        invalid(place(&hosts, &flat(), &r)).to_string(),
        "flavor RAM 512 MiB is smaller than the image's min_ram 1024 MiB"
    );

    let mut r = request(1, 512, 1);
    r.image.virtual_size_bytes = GIB + GIB / 2;
    assert_eq!(
        invalid(place(&hosts, &flat(), &r)).to_string(),
        "flavor disk 1 GiB is smaller than the image's virtual size 1.50 GiB (1610612736 bytes)"
    );
    r.image.virtual_size_bytes = GIB;
    assert!(place(&hosts, &flat(), &r).is_ok());
}

#[test]
fn zero_count_is_a_request_error() {
    let r = count(request(1, 512, 1), 0);
    assert_eq!(
        invalid(place(&[host("a", 8, 8192, 100)], &flat(), &r)),
        InvalidRequest::ZeroCount
    );
}

#[test]
fn disk_claim_counts_ephemeral_swap_and_image_sized_roots() {
    let mut r = PlacementRequest::new(FlavorSize {
        vcpus: 2,
        ram_mib: 2048,
        root_gib: 10,
        ephemeral_gib: 5,
        swap_mib: 1025,
    });
    assert_eq!(r.claim(), Resources::new(2, 2048, 17));
    // A 0 GiB root disk is sized from the image: the larger of min_disk and virtual size.
    r.flavor.root_gib = 0;
    r.image.min_disk_gib = 3;
    r.image.virtual_size_bytes = 4 * GIB + 1;
    assert_eq!(r.claim().disk_gib, 5 + 5 + 2);
    assert_eq!(validate_request(&r), Ok(()));
}

// ---- weighers --------------------------------------------------------------------------------

#[test]
fn spread_prefers_the_least_utilized_host() {
    let hosts = [
        with_used(host("a", 8, 8192, 100), 4, 4096, 50),
        with_used(host("b", 8, 8192, 100), 1, 1024, 10),
        with_used(host("c", 8, 8192, 100), 2, 2048, 20),
    ];
    assert_eq!(
        place(&hosts, &flat(), &request(1, 512, 1)).unwrap(),
        ids(&["b"])
    );
}

#[test]
fn spread_weighs_the_dominant_resource_relative_to_the_host() {
    // `a` has more free RAM in absolute terms but is 75% used on vCPUs; `b` is smaller and idle.
    let hosts = [
        with_used(host("a", 8, 65536, 100), 6, 0, 0),
        host("b", 4, 8192, 100),
    ];
    assert_eq!(
        place(&hosts, &flat(), &request(1, 512, 1)).unwrap(),
        ids(&["b"])
    );
}

#[test]
fn pack_prefers_the_most_utilized_host_that_still_fits() {
    let hosts = [
        with_used(host("a", 8, 8192, 100), 7, 7680, 90), // would be over after this server
        with_used(host("b", 8, 8192, 100), 4, 4096, 50),
        with_used(host("c", 8, 8192, 100), 1, 1024, 10),
    ];
    let mut r = request(1, 1024, 1);
    r.weigher = Weigher::Pack;
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), ids(&["b"]));
}

#[test]
fn pack_fills_one_host_before_the_next() {
    let hosts = [host("a", 4, 4096, 100), host("b", 4, 4096, 100)];
    let mut r = count(request(1, 1024, 1), 6);
    r.weigher = Weigher::Pack;
    assert_eq!(
        place(&hosts, &flat(), &r).unwrap(),
        ids(&["a", "a", "a", "a", "b", "b"])
    );
}

#[test]
fn ties_break_by_name_whatever_the_input_order() {
    let hosts = vec![
        host("c", 4, 4096, 100),
        host("a", 4, 4096, 100),
        host("b", 4, 4096, 100),
    ];
    let r = count(request(1, 1024, 1), 5);
    let expected = ids(&["a", "b", "c", "a", "b"]);
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), expected);
    let mut reversed = hosts.clone();
    reversed.reverse();
    assert_eq!(place(&reversed, &flat(), &r).unwrap(), expected);
    // Same name: the id decides.
    let mut twin = host("a", 4, 4096, 100);
    twin.id = "id-0".into();
    let hosts = [host("a", 4, 4096, 100), twin];
    assert_eq!(
        place(&hosts, &flat(), &request(1, 1024, 1)).unwrap(),
        vec!["id-0".to_string()]
    );
}

// ---- several servers at once -----------------------------------------------------------------

#[test]
fn count_spreads_servers_over_hosts() {
    let hosts = [
        host("a", 8, 8192, 100),
        host("b", 8, 8192, 100),
        host("c", 8, 8192, 100),
    ];
    let r = count(request(2, 2048, 10), 3);
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), ids(&["a", "b", "c"]));
}

#[test]
fn count_never_overbooks_and_fails_whole() {
    let hosts = [host("a", 4, 4096, 100), host("b", 4, 4096, 100)];
    let r = count(request(2, 2048, 10), 4);
    assert_eq!(
        place(&hosts, &flat(), &r).unwrap(),
        ids(&["a", "b", "a", "b"])
    );
    let e = no_valid_host(place(&hosts, &flat(), &count(r, 5)));
    assert_eq!((e.count, e.placed), (5, 4));
    assert_eq!(
        e.to_string(),
        "no valid host for server 5 of 5 among 2 hosts, once the first 4 were placed \
         (all or nothing: none was placed): 2 lack vCPUs and RAM \
         (a: needs 2 vCPUs and 2048 MiB, free 0 vCPUs and 0 MiB; \
         b: needs 2 vCPUs and 2048 MiB, free 0 vCPUs and 0 MiB)"
    );
}

// ---- server groups ---------------------------------------------------------------------------

#[test]
fn hard_affinity_keeps_servers_on_the_members_host() {
    let hosts = [
        with_used(host("a", 8, 8192, 100), 6, 6144, 60),
        host("b", 8, 8192, 100),
    ];
    let r = grouped(count(request(1, 1024, 1), 2), GroupPolicy::Affinity, &["a"]);
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), ids(&["a", "a"]));
    let e = no_valid_host(place(&hosts, &flat(), &count(r, 3)));
    assert_eq!(
        e.to_string(),
        "no valid host for server 3 of 3 among 2 hosts, once the first 2 were placed \
         (all or nothing: none was placed): 1 not where affinity group web runs (a), \
         1 lacks vCPUs and RAM (a: needs 1 vCPU and 1024 MiB, free 0 vCPUs and 0 MiB)"
    );
}

#[test]
fn hard_affinity_for_a_new_group_needs_a_host_that_fits_the_whole_request() {
    // Spread would start on the idle `a`, which fits only 2; `b` fits all 3.
    let hosts = [
        host("a", 2, 2048, 100),
        with_used(host("b", 8, 8192, 100), 4, 4096, 0),
    ];
    let r = grouped(count(request(1, 1024, 1), 3), GroupPolicy::Affinity, &[]);
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), ids(&["b", "b", "b"]));
    let e = no_valid_host(place(&hosts, &flat(), &count(r, 5)));
    assert_eq!(
        e.to_string(),
        "no valid host for any of the 5 servers among 2 hosts: 2 lack vCPUs and RAM \
         (a: needs 5 vCPUs and 5120 MiB for 5 servers, free 2 vCPUs and 2048 MiB; \
         b: needs 5 vCPUs and 5120 MiB for 5 servers, free 4 vCPUs and 4096 MiB)"
    );
}

#[test]
fn hard_anti_affinity_avoids_members_and_each_other() {
    let hosts = [
        host("a", 8, 8192, 100),
        host("b", 8, 8192, 100),
        host("c", 8, 8192, 100),
        host("d", 8, 8192, 100),
    ];
    let r = grouped(
        count(request(1, 1024, 1), 3),
        GroupPolicy::AntiAffinity,
        &["b"],
    );
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), ids(&["a", "c", "d"]));
    let e = no_valid_host(place(&hosts, &flat(), &count(r, 4)));
    assert_eq!(e.placed, 3);
    assert!(e
        .to_string()
        .ends_with("4 already run a member of anti-affinity group web (a, b, c, and 1 more)"));
}

#[test]
fn soft_anti_affinity_spreads_but_never_refuses() {
    let hosts = [
        host("a", 8, 8192, 100),
        host("b", 8, 8192, 100),
        host("c", 8, 8192, 100),
    ];
    let r = grouped(
        count(request(1, 1024, 1), 4),
        GroupPolicy::SoftAntiAffinity,
        &["a"],
    );
    assert_eq!(
        place(&hosts, &flat(), &r).unwrap(),
        ids(&["b", "c", "a", "b"])
    );
}

#[test]
fn soft_anti_affinity_outranks_spread() {
    // `b` is busier but has no member; spread alone would pick `a`.
    let hosts = [
        host("a", 8, 8192, 100),
        with_used(host("b", 8, 8192, 100), 6, 6144, 60),
    ];
    let r = grouped(request(1, 1024, 1), GroupPolicy::SoftAntiAffinity, &["a"]);
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), ids(&["b"]));
}

#[test]
fn soft_affinity_gathers_servers_and_spills_over_when_full() {
    let hosts = [
        host("a", 8, 8192, 100),
        with_used(host("b", 4, 4096, 100), 2, 2048, 0),
    ];
    let r = grouped(
        count(request(1, 1024, 1), 3),
        GroupPolicy::SoftAffinity,
        &["b"],
    );
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), ids(&["b", "b", "a"]));
}

#[test]
fn soft_affinity_for_a_new_group_follows_its_first_server() {
    let hosts = [host("a", 8, 8192, 100), host("b", 8, 8192, 100)];
    let r = grouped(
        count(request(1, 1024, 1), 3),
        GroupPolicy::SoftAffinity,
        &[],
    );
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), ids(&["a", "a", "a"]));
}

// ---- forced host -----------------------------------------------------------------------------

#[test]
fn forced_host_may_be_disabled_but_not_down_or_full() {
    let mut maintenance = host("a", 4, 4096, 100);
    maintenance.enabled = false;
    maintenance.disabled_reason = "maintenance".into();
    let hosts = [maintenance, host("b", 64, 65536, 1000)];
    let mut r = count(request(1, 1024, 1), 2);
    r.forced_host = Some("id-a".into());
    assert_eq!(place(&hosts, &flat(), &r).unwrap(), ids(&["a", "a"]));

    let e = no_valid_host(place(&hosts, &flat(), &count(r.clone(), 5)));
    assert_eq!(
        e.to_string(),
        "no valid host for server 5 of 5 on the requested host, once the first 4 were placed \
         (all or nothing: none was placed): a lacks vCPUs and RAM: \
         needs 1 vCPU and 1024 MiB, free 0 vCPUs and 0 MiB"
    );

    let mut down = hosts.clone();
    down[0].up = false;
    assert_eq!(
        no_valid_host(place(&down, &flat(), &r)).to_string(),
        "no valid host for any of the 2 servers on the requested host: \
         a is down (its agent holds no valid lease)"
    );
}

#[test]
fn forced_host_still_obeys_zone_group_and_exclusions() {
    let hosts = [host("a", 8, 8192, 100), host("b", 8, 8192, 100)];
    let mut r = request(1, 1024, 1);
    r.forced_host = Some("id-a".into());
    r.availability_zone = Some("az-2".into());
    assert!(matches!(
        no_valid_host(place(&hosts, &flat(), &r)).rejections[0].reason,
        Reason::OtherZone { .. }
    ));
    let mut r = grouped(request(1, 1024, 1), GroupPolicy::AntiAffinity, &["a"]);
    r.forced_host = Some("id-a".into());
    assert!(matches!(
        no_valid_host(place(&hosts, &flat(), &r)).rejections[0].reason,
        Reason::AntiAffinity { members: 1, .. }
    ));
    let mut r = request(1, 1024, 1);
    r.forced_host = Some("id-a".into());
    r.exclude_hosts.insert("id-a".into());
    assert_eq!(
        no_valid_host(place(&hosts, &flat(), &r)).rejections[0].reason,
        Reason::Excluded
    );
}

#[test]
fn unknown_forced_host_is_a_request_error() {
    let mut r = request(1, 1024, 1);
    r.forced_host = Some("id-nope".into());
    assert_eq!(
        invalid(place(&[host("a", 8, 8192, 100)], &flat(), &r)).to_string(),
        "the requested host id-nope does not exist"
    );
}

// ---- fits: apply's re-check (I3) -------------------------------------------------------------

#[test]
fn fits_rejects_a_stale_placement_after_a_concurrent_claim() {
    let snapshot = [host("a", 4, 4096, 100)];
    let r = request(2, 3072, 10);
    assert_eq!(place(&snapshot, &flat(), &r).unwrap(), ids(&["a"]));
    // Another request was admitted first on the same host.
    let now = with_used(snapshot[0].clone(), 2, 3072, 10);
    assert_eq!(
        fits(&now, &flat(), &r).unwrap_err().to_string(),
        "lacks RAM: needs 3072 MiB, free 1024 MiB"
    );
}

#[test]
fn fits_rechecks_hard_policies_against_current_members() {
    let a = host("a", 8, 8192, 100);
    // Two anti-affinity creates raced from one snapshot; the first joined the group on `a`.
    let r = grouped(request(1, 1024, 1), GroupPolicy::AntiAffinity, &["a"]);
    assert_eq!(
        fits(&a, &flat(), &r).unwrap_err().to_string(),
        "already runs a member of anti-affinity group web"
    );
    let r = grouped(request(1, 1024, 1), GroupPolicy::Affinity, &["b"]);
    assert_eq!(
        fits(&a, &flat(), &r).unwrap_err().to_string(),
        "is not where affinity group web runs (id-b)"
    );
    let r = grouped(request(1, 1024, 1), GroupPolicy::SoftAntiAffinity, &["a"]);
    assert_eq!(fits(&a, &flat(), &r), Ok(()));
}

#[test]
fn fits_honours_the_forced_host() {
    let mut a = host("a", 8, 8192, 100);
    a.enabled = false;
    let mut r = request(1, 1024, 1);
    assert!(matches!(
        fits(&a, &flat(), &r),
        Err(Reason::Disabled { .. })
    ));
    r.forced_host = Some("id-a".into());
    assert_eq!(fits(&a, &flat(), &r), Ok(()));
    r.forced_host = Some("id-b".into());
    assert_eq!(
        fits(&a, &flat(), &r).unwrap_err().to_string(),
        "is not the requested host id-b"
    );
}

#[test]
fn applying_a_multi_create_placement_server_by_server_succeeds() {
    // What apply does: re-check each server with `fits`, then claim and join the group.
    let mut hosts = vec![
        host("a", 4, 4096, 100),
        host("b", 4, 4096, 100),
        host("c", 2, 2048, 100),
    ];
    let mut r = grouped(
        count(request(1, 1024, 1), 3),
        GroupPolicy::AntiAffinity,
        &[],
    );
    let placement = place(&hosts, &flat(), &r).unwrap();
    for id in &placement {
        let h = hosts.iter_mut().find(|h| &h.id == id).unwrap();
        assert_eq!(fits(h, &flat(), &r), Ok(()));
        h.used = h.used.saturating_add(r.claim());
        r.group.as_mut().unwrap().member_hosts.push(id.clone());
    }
    // A fourth member no longer fits anywhere.
    assert!(hosts.iter().all(|h| fits(h, &flat(), &r).is_err()));
}

// ---- explanations ----------------------------------------------------------------------------

#[test]
fn explanation_groups_hosts_by_cause() {
    let mut down = host("node-1", 8, 8192, 100);
    down.up = false;
    let mut disabled = host("node-2", 8, 8192, 100);
    disabled.enabled = false;
    disabled.disabled_reason = "maintenance".into();
    let small = with_used(host("node-3", 8, 8192, 100), 0, 6144, 0);
    let e = no_valid_host(place(
        &[small, disabled, down],
        &flat(),
        &request(1, 4096, 10),
    ));
    assert_eq!(
        e.to_string(),
        "no valid host among 3 hosts: 1 down (node-1), 1 disabled (node-2: maintenance), \
         1 lacks RAM (node-3: needs 4096 MiB, free 2048 MiB)"
    );
    assert_eq!(
        e.rejections
            .iter()
            .map(|r| r.host_name.as_str())
            .collect::<Vec<_>>(),
        ["node-1", "node-2", "node-3"]
    );
}

#[test]
fn explanation_names_three_hosts_per_cause_then_counts() {
    let hosts: Vec<HostView> = (1..=5)
        .map(|i| {
            let mut h = host(&format!("node-{i}"), 8, 8192, 100);
            h.enabled = false;
            h
        })
        .collect();
    assert_eq!(
        no_valid_host(place(&hosts, &flat(), &request(1, 512, 1))).to_string(),
        "no valid host among 5 hosts: 5 disabled (node-1: no reason given; \
         node-2: no reason given; node-3: no reason given; and 2 more)"
    );
    assert_eq!(
        no_valid_host(place(&[], &flat(), &request(1, 512, 1))).to_string(),
        "no valid host: no hosts are registered"
    );
}

#[test]
fn errors_round_trip_through_serde() {
    let mut down = host("a", 8, 8192, 100);
    down.up = false;
    let e = place(
        &[down, host("b", 1, 512, 1)],
        &flat(),
        &request(2, 1024, 10),
    )
    .unwrap_err();
    let json = serde_json::to_string(&e).unwrap();
    assert_eq!(serde_json::from_str::<ScheduleError>(&json).unwrap(), e);
    assert_eq!(
        GroupPolicy::parse("soft-anti-affinity"),
        Some(GroupPolicy::SoftAntiAffinity)
    );
    assert_eq!(
        serde_json::to_string(&GroupPolicy::AntiAffinity).unwrap(),
        "\"anti-affinity\""
    );
    assert_eq!(Weigher::parse("pack"), Some(Weigher::Pack));
}
