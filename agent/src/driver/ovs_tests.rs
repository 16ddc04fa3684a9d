//! Unit tests of the OVS driver's pure parts: flow text in and out, cookies, validation.
use super::*;

#[test]
fn dump_flows_output_parses_into_flows_in_the_written_form() {
    let text = "NXST_FLOW reply (xid=0x4):\n \
        cookie=0xf100000000000002, priority=100,in_port=1 actions=mod_vlan_vid:5,resubmit(,10)\n \
        cookie=0x2, duration=0.003s, table=0, n_packets=0, n_bytes=0, idle_age=0, priority=0 actions=drop\n \
        cookie=0x5, in_port=2 actions=drop\n \
        cookie=0x1f00000002, table=10, reset_counts priority=10,dl_vlan=5 actions=strip_vlan,output:1\n";
    let flows = parse_dump_flows(text).unwrap();
    assert_eq!(
        flows,
        vec![
            Flow::new(0x2, 0, 0, "", "drop"),
            Flow::new(
                0xf100000000000002,
                0,
                100,
                "in_port=1",
                "mod_vlan_vid:5,resubmit(,10)"
            ),
            Flow::new(0x5, 0, 32768, "in_port=2", "drop"),
            Flow::new(0x1f00000002, 10, 10, "dl_vlan=5", "strip_vlan,output:1"),
        ]
    );
    assert!(parse_dump_flows(" cookie=0x5, in_port=2\n").is_err());
    assert!(parse_dump_flows(" cookie=0xzz, in_port=2 actions=drop\n").is_err());
    assert!(parse_dump_flows(" table=300, in_port=2 actions=drop\n").is_err());
}

#[test]
fn flows_render_for_add_and_strict_delete() {
    let f = Flow::new(0xf1 << 56 | 7, 10, 5, "ip,nw_dst=10.0.0.0/24", "drop");
    assert_eq!(
        f.to_add(),
        "cookie=0xf100000000000007,table=10,priority=5,ip,nw_dst=10.0.0.0/24,actions=drop"
    );
    assert_eq!(
        f.to_strict_delete(),
        "cookie=0xf100000000000007/0xffffffffffffffff,table=10,priority=5,ip,nw_dst=10.0.0.0/24"
    );
    let all = Flow::new(1, 0, 0, "", "drop");
    assert_eq!(all.to_add(), "cookie=0x1,table=0,priority=0,actions=drop");
}

#[test]
fn cookie_masks_select_by_the_masked_bits() {
    let ours = CookieMatch {
        value: 0xf1 << 56,
        mask: 0xff << 56,
    };
    assert!(ours.matches(0xf1 << 56 | 0x1234));
    assert!(!ours.matches(0xf2 << 56));
    assert!(!ours.matches(0x2));
    assert_eq!(
        ours.to_ofctl(),
        "cookie=0xf100000000000000/0xff00000000000000"
    );
    assert!(CookieMatch::exact(5).matches(5) && !CookieMatch::exact(5).matches(7));
}

#[test]
fn names_are_short_device_names_without_shell_or_ovsdb_syntax() {
    for ok in ["br-int", "br_tun", "tap0b7a3c52-6f", "vx.10", "a"] {
        check_name("port name", ok).unwrap();
    }
    for bad in [
        "",
        "a-name-longer-than15",
        "-x",
        ".x",
        "a b",
        "a;b",
        "a\"b",
        "a=b",
        "a,b",
        "a/b",
    ] {
        assert!(check_name("port name", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn vif_ports_carry_iface_id_and_attached_mac() {
    let spec = PortSpec::vif(
        "tap1",
        PortKind::System,
        "port-1",
        "FA:16:3E:00:00:01".parse().unwrap(),
        VlanTag::new(3).unwrap(),
    );
    check_port(&spec).unwrap();
    assert_eq!(spec.external_ids["iface-id"], "port-1");
    assert_eq!(spec.external_ids["attached-mac"], "fa:16:3e:00:00:01");
}

#[test]
fn invalid_errors_say_what_and_why() {
    let e = Vni::new(0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "VNI \"0\" is invalid: it must be 1..=16777215"
    );
}

#[test]
fn flow_sync_plans_deletions_and_replacements_by_identity() {
    let keep = Flow::new(1, 0, 10, "in_port=1", "drop");
    let change_old = Flow::new(1, 0, 20, "in_port=2", "drop");
    let change_new = Flow::new(2, 0, 20, "in_port=2", "output:1");
    let gone = Flow::new(1, 5, 1, "", "drop");
    let new = Flow::new(1, 6, 1, "", "drop");
    let sync = plan_flow_sync(
        &[gone.clone(), change_old, keep.clone()],
        &[new.clone(), keep.clone(), change_new.clone()],
    );
    assert_eq!(
        sync.deleted,
        vec![gone],
        "a replaced flow is not deleted first"
    );
    assert_eq!(sync.added, vec![change_new, new]);
    let same = std::slice::from_ref(&keep);
    assert!(plan_flow_sync(same, same).is_noop());
}
