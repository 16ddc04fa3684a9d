//! Renderer tests: golden files (byte for byte), hostile input, structure checked with an XML
//! parser, and validation errors. Regenerate the golden files with
//! `FLOTILLA_UPDATE_GOLDEN=1 cargo test -p flotilla-agent render::` (see `render/mod.rs`).

use super::*;
use roxmltree::{Document, Node};
use std::path::Path;

const ID: &str = "6f1c1d2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f";
const PORT: &str = "0d7e6f5a-4b3c-4d2e-9f1a-2b3c4d5e6f70";
const GIB: u64 = 1 << 30;

/// The hostile server name: tries to close the title and inject devices, with both quote kinds,
/// entities, emoji and characters XML 1.0 cannot carry.
const HOSTILE_NAME: &str = "x</title></name><devices><disk type='file'><source file=\"/etc/shadow\"/></disk></devices>\
     &amp; 'q' \"qq\" 🚀🦀 tab\there\nnew\rline nul\u{0}esc\u{1b}del\u{7f}c1\u{85}nonchar\u{FFFE}\u{FFFF}]]>";
/// HOSTILE_NAME as the title must show it.
const HOSTILE_TITLE: &str =
    "x</title></name><devices><disk type='file'><source file=\"/etc/shadow\"/></disk></devices>\
     &amp; 'q' \"qq\" 🚀🦀 tab here new line nulescdelc1nonchar]]>";

fn disk(dir: &str, role: &str, size_bytes: u64) -> DiskSpec {
    DiskSpec {
        path: PathBuf::from(format!("{dir}/{role}.qcow2")),
        size_bytes,
    }
}

/// Smallest useful server: TCG, qemu64, no NIC, writeback cache.
fn minimal() -> DomainSpec {
    let dir = format!("/var/lib/flotilla/disks/{ID}/1");
    DomainSpec {
        domain_type: DomainType::Qemu,
        cpu: CpuMode::default_for(DomainType::Qemu),
        server_id: ID.to_owned(),
        name: "web-1".to_owned(),
        generation: 1,
        ram_mib: 512,
        vcpus: 1,
        boot: Boot::Disk,
        disks: Disks {
            root: disk(&dir, "root", 10 * GIB),
            ephemeral: None,
            swap: None,
            cache: DiskCache::Writeback,
        },
        nics: Vec::new(),
        console_log: PathBuf::from(format!("/var/lib/flotilla/console/{ID}.log")),
    }
}

/// Everything on: KVM, host-model, ephemeral and swap, an OVS port and a libvirt network.
fn full_kvm() -> DomainSpec {
    let dir = format!("/var/lib/flotilla/disks/{ID}/7");
    DomainSpec {
        domain_type: DomainType::Kvm,
        cpu: CpuMode::default_for(DomainType::Kvm),
        name: "db-primary".to_owned(),
        generation: 7,
        ram_mib: 4096,
        vcpus: 4,
        disks: Disks {
            root: disk(&dir, "root", 40 * GIB),
            ephemeral: Some(disk(&dir, "ephemeral", 20 * GIB)),
            swap: Some(disk(&dir, "swap", GIB)),
            cache: DiskCache::None,
        },
        nics: vec![
            Nic::OvsBridge {
                bridge: "br-int".to_owned(),
                port_id: PORT.to_owned(),
                mac: "FA:16:3E:12:34:56".to_owned(),
                mtu: Some(1450),
            },
            Nic::Network {
                network: "default".to_owned(),
                mac: Some("52:54:00:ab:cd:ef".to_owned()),
                mtu: None,
            },
        ],
        ..minimal()
    }
}

/// The test guest of the real-component tests: direct kernel boot, hypervisor's CPU.
fn direct_kernel() -> DomainSpec {
    DomainSpec {
        cpu: CpuMode::HypervisorDefault,
        name: "tick".to_owned(),
        ram_mib: 64,
        boot: Boot::Kernel {
            kernel: PathBuf::from("/var/lib/flotilla/guest/vmlinuz"),
            initrd: Some(PathBuf::from("/var/lib/flotilla/guest/initrd.gz")),
            cmdline: "console=ttyS0 panic=-1 quiet".to_owned(),
        },
        nics: vec![Nic::Network {
            network: "default".to_owned(),
            mac: None,
            mtu: None,
        }],
        ..minimal()
    }
}

/// Hostile strings everywhere a string goes.
fn hostile() -> DomainSpec {
    let dir = "/srv/it's <here> & \"there\"";
    DomainSpec {
        name: HOSTILE_NAME.to_owned(),
        boot: Boot::Kernel {
            kernel: PathBuf::from(format!("{dir}/vmlinuz")),
            initrd: None,
            cmdline: "console=ttyS0 msg=\"<hi & 'bye'>\" ]]>".to_owned(),
        },
        disks: Disks {
            root: disk(dir, "root", 0),
            ..minimal().disks
        },
        nics: vec![
            Nic::OvsBridge {
                bridge: "br-int".to_owned(),
                port_id: PORT.to_owned(),
                mac: "02:00:00:00:00:01".to_owned(),
                mtu: None,
            },
            Nic::Network {
                network: "net<&>'\"".to_owned(),
                mac: None,
                mtu: None,
            },
        ],
        console_log: PathBuf::from(format!("{dir}/console.log")),
        ..minimal()
    }
}

fn render(spec: DomainSpec) -> String {
    render_domain(&spec.validate().expect("the fixture is valid"))
}

/// Compares `actual` with `testdata/<name>` byte for byte, or rewrites the file when
/// FLOTILLA_UPDATE_GOLDEN is set.
fn check_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/render/testdata")
        .join(name);
    if std::env::var_os("FLOTILLA_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with FLOTILLA_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert!(
        actual == expected,
        "{} differs from the rendered XML (regenerate with FLOTILLA_UPDATE_GOLDEN=1 cargo test \
         -p flotilla-agent render:: if the change is intended)\n--- rendered ---\n{actual}",
        path.display()
    );
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &'static str) -> Node<'a, 'i> {
    children(node, name)
        .next()
        .unwrap_or_else(|| panic!("<{name}> missing"))
}

fn children<'a, 'i: 'a>(
    node: Node<'a, 'i>,
    name: &'static str,
) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(move |n| n.is_element() && n.has_tag_name(name))
}

fn text<'a>(node: Node<'a, '_>, name: &'static str) -> &'a str {
    child(node, name).text().unwrap_or_default()
}

fn attr<'a>(node: Node<'a, '_>, name: &str) -> &'a str {
    node.attribute(name)
        .unwrap_or_else(|| panic!("<{}> has no {name}", node.tag_name().name()))
}

fn element_names(node: Node<'_, '_>) -> Vec<String> {
    node.children()
        .filter(Node::is_element)
        .map(|n| n.tag_name().name().to_owned())
        .collect()
}

#[test]
fn golden_minimal_qemu() {
    check_golden("minimal_qemu.xml", &render(minimal()));
}

#[test]
fn golden_full_kvm() {
    check_golden("full_kvm.xml", &render(full_kvm()));
}

#[test]
fn golden_direct_kernel() {
    check_golden("direct_kernel.xml", &render(direct_kernel()));
}

#[test]
fn golden_hostile_strings() {
    check_golden("hostile.xml", &render(hostile()));
}

#[test]
fn metadata_is_rendered_exactly_as_the_contract() {
    let xml = render(full_kvm());
    let contract = format!(
        "<metadata><flotilla:server xmlns:flotilla=\"https://flotilla.dev/xmlns/server/1\">\
         <flotilla:id>{ID}</flotilla:id><flotilla:generation>7</flotilla:generation>\
         </flotilla:server></metadata>"
    );
    assert!(xml.contains(&contract), "metadata contract missing:\n{xml}");

    let doc = Document::parse(&xml).expect("well-formed");
    let server = child(child(doc.root_element(), "metadata"), "server");
    assert_eq!(server.tag_name().namespace(), Some(METADATA_NAMESPACE));
    let id = child(server, "id");
    assert_eq!(id.tag_name().namespace(), Some(METADATA_NAMESPACE));
    assert_eq!(id.text(), Some(ID));
    assert_eq!(text(server, "generation").parse::<u64>(), Ok(7));
}

#[test]
fn full_spec_has_the_expected_structure() {
    let xml = render(full_kvm());
    let doc = Document::parse(&xml).expect("well-formed");
    let domain = doc.root_element();
    assert_eq!(domain.tag_name().name(), "domain");
    assert_eq!(attr(domain, "type"), "kvm");
    assert_eq!(
        element_names(domain),
        [
            "name",
            "uuid",
            "title",
            "description",
            "metadata",
            "memory",
            "currentMemory",
            "vcpu",
            "os",
            "features",
            "cpu",
            "clock",
            "on_poweroff",
            "on_reboot",
            "on_crash",
            "devices"
        ]
    );
    assert_eq!(text(domain, "name"), format!("flotilla-{ID}"));
    assert_eq!(text(domain, "uuid"), ID);
    assert_eq!(text(domain, "title"), "db-primary");
    for memory in ["memory", "currentMemory"] {
        assert_eq!(attr(child(domain, memory), "unit"), "KiB");
        assert_eq!(text(domain, memory), (4096 * 1024).to_string());
    }
    assert_eq!(text(domain, "vcpu"), "4");
    let os = child(domain, "os");
    assert_eq!(text(os, "type"), "hvm");
    assert_eq!(attr(child(os, "boot"), "dev"), "hd");
    assert_eq!(element_names(child(domain, "features")), ["acpi", "apic"]);
    assert_eq!(attr(child(domain, "cpu"), "mode"), "host-model");
    assert_eq!(attr(child(domain, "clock"), "offset"), "utc");
    assert_eq!(text(domain, "on_poweroff"), "destroy");
    assert_eq!(text(domain, "on_reboot"), "restart");
    assert_eq!(text(domain, "on_crash"), "destroy");

    let devices = child(domain, "devices");
    let disks: Vec<_> = children(devices, "disk").collect();
    let expected = [("vda", "root"), ("vdb", "ephemeral"), ("vdc", "swap")];
    assert_eq!(disks.len(), expected.len());
    for (disk, (dev, role)) in disks.iter().zip(expected) {
        assert_eq!(attr(*disk, "type"), "file");
        let driver = child(*disk, "driver");
        assert_eq!(
            (
                attr(driver, "name"),
                attr(driver, "type"),
                attr(driver, "cache")
            ),
            ("qemu", "qcow2", "none")
        );
        assert_eq!(
            attr(child(*disk, "source"), "file"),
            format!("/var/lib/flotilla/disks/{ID}/7/{role}.qcow2")
        );
        let target = child(*disk, "target");
        assert_eq!((attr(target, "dev"), attr(target, "bus")), (dev, "virtio"));
    }

    let nics: Vec<_> = children(devices, "interface").collect();
    assert_eq!(nics.len(), 2);
    let ovs = nics[0];
    assert_eq!(attr(ovs, "type"), "bridge");
    assert_eq!(attr(child(ovs, "source"), "bridge"), "br-int");
    let port = child(ovs, "virtualport");
    assert_eq!(attr(port, "type"), "openvswitch");
    assert_eq!(attr(child(port, "parameters"), "interfaceid"), PORT);
    assert_eq!(
        attr(child(ovs, "mac"), "address"),
        "fa:16:3e:12:34:56",
        "MAC lowercased"
    );
    assert_eq!(attr(child(ovs, "model"), "type"), "virtio");
    assert_eq!(attr(child(ovs, "mtu"), "size"), "1450");
    assert_eq!(attr(nics[1], "type"), "network");
    assert_eq!(attr(child(nics[1], "source"), "network"), "default");

    let serial = child(devices, "serial");
    assert_eq!(attr(serial, "type"), "pty");
    let log = child(serial, "log");
    assert_eq!(
        attr(log, "file"),
        format!("/var/lib/flotilla/console/{ID}.log")
    );
    assert_eq!(attr(log, "append"), "on");
    assert_eq!(attr(child(devices, "console"), "type"), "pty");
    assert_eq!(
        attr(child(child(devices, "console"), "target"), "type"),
        "serial"
    );
}

#[test]
fn direct_kernel_boot_and_qemu_cpu_choices() {
    let doc_xml = render(direct_kernel());
    let doc = Document::parse(&doc_xml).expect("well-formed");
    let domain = doc.root_element();
    assert_eq!(attr(domain, "type"), "qemu");
    let os = child(domain, "os");
    assert_eq!(element_names(os), ["type", "kernel", "initrd", "cmdline"]);
    assert_eq!(text(os, "cmdline"), "console=ttyS0 panic=-1 quiet");
    assert_eq!(
        children(domain, "cpu").count(),
        0,
        "hypervisor default: no <cpu>"
    );
    let nic = child(child(domain, "devices"), "interface");
    assert_eq!(children(nic, "mac").count(), 0, "libvirt picks the MAC");

    let qemu64 = render(minimal());
    let doc = Document::parse(&qemu64).expect("well-formed");
    let cpu = child(doc.root_element(), "cpu");
    assert_eq!(attr(cpu, "mode"), "custom");
    assert_eq!(text(cpu, "model"), "qemu64");
    let driver = child(
        child(child(doc.root_element(), "devices"), "disk"),
        "driver",
    );
    assert_eq!(attr(driver, "cache"), "writeback");
    assert_eq!(
        children(child(doc.root_element(), "devices"), "interface").count(),
        0
    );
}

#[test]
fn hostile_name_cannot_break_out_of_the_title() {
    let xml = render(hostile());
    let doc = Document::parse(&xml).expect("hostile input still gives well-formed XML");
    let domain = doc.root_element();
    assert_eq!(children(domain, "name").count(), 1);
    assert_eq!(children(domain, "devices").count(), 1);
    assert_eq!(text(domain, "name"), format!("flotilla-{ID}"));
    assert_eq!(text(domain, "title"), HOSTILE_TITLE);
    assert_eq!(
        text(domain, "description"),
        format!("Flotilla server {HOSTILE_TITLE}")
    );
    let devices = child(domain, "devices");
    assert_eq!(children(devices, "disk").count(), 1, "no injected disk");
    assert!(
        !xml.contains("/etc/shadow\"/>"),
        "the injected element must stay text"
    );
}

#[test]
fn every_user_string_round_trips_through_a_parser() {
    let spec = hostile();
    let xml = render(spec.clone());
    let doc = Document::parse(&xml).expect("well-formed");
    let domain = doc.root_element();
    let os = child(domain, "os");
    let Boot::Kernel {
        kernel, cmdline, ..
    } = &spec.boot
    else {
        unreachable!()
    };
    assert_eq!(text(os, "kernel"), kernel.to_str().unwrap());
    assert_eq!(text(os, "cmdline"), cmdline);
    let devices = child(domain, "devices");
    assert_eq!(
        attr(child(child(devices, "disk"), "source"), "file"),
        spec.disks.root.path.to_str().unwrap()
    );
    let nics: Vec<_> = children(devices, "interface").collect();
    assert_eq!(attr(child(nics[1], "source"), "network"), "net<&>'\"");
    assert_eq!(
        attr(child(child(devices, "serial"), "log"), "file"),
        spec.console_log.to_str().unwrap()
    );
}

#[test]
fn characters_xml_cannot_carry_are_stripped_from_the_name() {
    let xml = render(hostile());
    for c in [
        '\u{0}', '\u{1b}', '\u{7f}', '\u{85}', '\u{FFFE}', '\u{FFFF}', '\t', '\r',
    ] {
        assert!(!xml.contains(c), "{c:?} must not reach the XML");
    }
    let valid = DomainSpec {
        name: "\u{1}\u{2}\u{3}".to_owned(),
        ..minimal()
    }
    .validate()
    .unwrap();
    assert_eq!(valid.spec().name, "");
    let xml = render_domain(&valid);
    let doc = Document::parse(&xml).expect("well-formed");
    assert_eq!(
        children(doc.root_element(), "title").count(),
        0,
        "empty title left out"
    );
    assert_eq!(text(doc.root_element(), "description"), "Flotilla server");
}

#[test]
fn escape_replaces_the_five_special_characters() {
    assert_eq!(escape(r#"a&b<c>d"e'f"#), "a&amp;b&lt;c&gt;d&quot;e&apos;f");
    assert_eq!(escape("plain 🚀"), "plain 🚀");
    assert_eq!(
        escape("&amp;"),
        "&amp;amp;",
        "already-escaped text is escaped again"
    );
}

#[test]
fn invalid_specs_are_rejected_with_typed_errors() {
    type Mutation = fn(&mut DomainSpec);
    let cases: Vec<(&str, Mutation, DomainSpecError)> = vec![
        (
            "uppercase server id",
            |s| s.server_id = ID.to_uppercase(),
            DomainSpecError::InvalidServerId(ID.to_uppercase()),
        ),
        (
            "server id injection",
            |s| s.server_id = "x</uuid>".to_owned(),
            DomainSpecError::InvalidServerId("x</uuid>".to_owned()),
        ),
        (
            "zero memory",
            |s| s.ram_mib = 0,
            DomainSpecError::ZeroMemory,
        ),
        (
            "memory overflowing KiB",
            |s| s.ram_mib = u64::MAX,
            DomainSpecError::MemoryTooLarge { ram_mib: u64::MAX },
        ),
        ("zero vcpus", |s| s.vcpus = 0, DomainSpecError::ZeroVcpus),
        (
            "host-model under TCG",
            |s| s.cpu = CpuMode::HostModel,
            DomainSpecError::HostModelNeedsKvm,
        ),
        (
            "relative root disk",
            |s| s.disks.root.path = PathBuf::from("disks/root.qcow2"),
            DomainSpecError::NotAbsolute {
                what: "root disk path",
                path: PathBuf::from("disks/root.qcow2"),
            },
        ),
        (
            "root disk escaping its directory",
            |s| s.disks.root.path = PathBuf::from("/var/lib/../../etc/passwd"),
            DomainSpecError::NotAbsolute {
                what: "root disk path",
                path: PathBuf::from("/var/lib/../../etc/passwd"),
            },
        ),
        (
            "relative console log",
            |s| s.console_log = PathBuf::from("console.log"),
            DomainSpecError::NotAbsolute {
                what: "console log path",
                path: PathBuf::from("console.log"),
            },
        ),
        (
            "newline in a path",
            |s| s.disks.root.path = PathBuf::from("/a\nb"),
            DomainSpecError::ControlCharacter {
                what: "root disk path",
                value: "/a\nb".to_owned(),
            },
        ),
        (
            "ephemeral disk without a size",
            |s| s.disks.ephemeral = Some(disk("/d", "ephemeral", 0)),
            DomainSpecError::EmptyDisk(DiskRole::Ephemeral),
        ),
        (
            "swap on the root disk's file",
            |s| {
                s.disks.swap = Some(DiskSpec {
                    path: s.disks.root.path.clone(),
                    size_bytes: 1,
                })
            },
            DomainSpecError::DuplicatePath {
                path: minimal().disks.root.path,
            },
        ),
        (
            "relative kernel",
            |s| {
                s.boot = Boot::Kernel {
                    kernel: PathBuf::from("vmlinuz"),
                    initrd: None,
                    cmdline: String::new(),
                }
            },
            DomainSpecError::NotAbsolute {
                what: "kernel path",
                path: PathBuf::from("vmlinuz"),
            },
        ),
        (
            "control character in the kernel command line",
            |s| {
                s.boot = Boot::Kernel {
                    kernel: PathBuf::from("/k"),
                    initrd: None,
                    cmdline: "a\u{0}".to_owned(),
                }
            },
            DomainSpecError::ControlCharacter {
                what: "kernel command line",
                value: "a\u{0}".to_owned(),
            },
        ),
        (
            "malformed MAC",
            |s| s.nics = vec![ovs_nic("fa:16:3e:12:34")],
            DomainSpecError::InvalidMac("fa:16:3e:12:34".to_owned()),
        ),
        (
            "non-hex MAC",
            |s| s.nics = vec![ovs_nic("fa:16:3e:12:34:zz")],
            DomainSpecError::InvalidMac("fa:16:3e:12:34:zz".to_owned()),
        ),
        (
            "multicast MAC",
            |s| s.nics = vec![ovs_nic("01:00:5E:00:00:01")],
            DomainSpecError::MulticastMac("01:00:5e:00:00:01".to_owned()),
        ),
        (
            "duplicate MAC",
            |s| s.nics = vec![ovs_nic("fa:16:3e:00:00:01"), ovs_nic("FA:16:3E:00:00:01")],
            DomainSpecError::DuplicateMac("fa:16:3e:00:00:01".to_owned()),
        ),
        (
            "port id that is not a UUID",
            |s| {
                s.nics = vec![Nic::OvsBridge {
                    bridge: "br-int".to_owned(),
                    port_id: "port-1".to_owned(),
                    mac: "fa:16:3e:00:00:01".to_owned(),
                    mtu: None,
                }]
            },
            DomainSpecError::InvalidPortId("port-1".to_owned()),
        ),
        (
            "bridge name longer than an interface name",
            |s| {
                s.nics = vec![Nic::OvsBridge {
                    bridge: "br-0123456789abc".to_owned(),
                    port_id: PORT.to_owned(),
                    mac: "fa:16:3e:00:00:01".to_owned(),
                    mtu: None,
                }]
            },
            DomainSpecError::InvalidName {
                what: "bridge name",
                name: "br-0123456789abc".to_owned(),
            },
        ),
        (
            "bridge name with markup",
            |s| {
                s.nics = vec![Nic::OvsBridge {
                    bridge: "br'<&>".to_owned(),
                    port_id: PORT.to_owned(),
                    mac: "fa:16:3e:00:00:01".to_owned(),
                    mtu: None,
                }]
            },
            DomainSpecError::InvalidName {
                what: "bridge name",
                name: "br'<&>".to_owned(),
            },
        ),
        (
            "network name with a slash",
            |s| {
                s.nics = vec![Nic::Network {
                    network: "a/b".to_owned(),
                    mac: None,
                    mtu: None,
                }]
            },
            DomainSpecError::InvalidName {
                what: "network name",
                name: "a/b".to_owned(),
            },
        ),
        (
            "empty network name",
            |s| {
                s.nics = vec![Nic::Network {
                    network: String::new(),
                    mac: None,
                    mtu: None,
                }]
            },
            DomainSpecError::InvalidName {
                what: "network name",
                name: String::new(),
            },
        ),
        (
            "tiny MTU",
            |s| {
                s.nics = vec![Nic::Network {
                    network: "default".to_owned(),
                    mac: None,
                    mtu: Some(67),
                }]
            },
            DomainSpecError::InvalidMtu(67),
        ),
    ];
    for (case, mutate, expected) in cases {
        let mut spec = minimal();
        mutate(&mut spec);
        assert_eq!(spec.validate(), Err(expected), "{case}");
    }
}

fn ovs_nic(mac: &str) -> Nic {
    Nic::OvsBridge {
        bridge: "br-int".to_owned(),
        port_id: PORT.to_owned(),
        mac: mac.to_owned(),
        mtu: None,
    }
}

#[test]
fn errors_read_as_sentences() {
    let e = DomainSpecError::EmptyDisk(DiskRole::Swap);
    assert_eq!(e.to_string(), "the swap disk has no size");
    let e = DomainSpecError::NotAbsolute {
        what: "kernel path",
        path: PathBuf::from("k"),
    };
    assert_eq!(
        e.to_string(),
        "kernel path \"k\" is not an absolute path without `..`"
    );
}

#[test]
fn domain_names_map_back_to_server_ids() {
    assert_eq!(domain_name(ID), format!("flotilla-{ID}"));
    assert_eq!(server_id_from_domain_name(&domain_name(ID)), Some(ID));
    assert_eq!(server_id_from_domain_name(ID), None, "no prefix");
    assert_eq!(
        server_id_from_domain_name("flotilla-web-1"),
        None,
        "not a UUID"
    );
    assert_eq!(
        server_id_from_domain_name(&format!("flotilla-{}", ID.to_uppercase())),
        None
    );
    assert_eq!(server_id_from_domain_name("instance-00000001"), None);
}

#[test]
fn valid_spec_exposes_its_identity_and_disks() {
    let valid = full_kvm().validate().unwrap();
    assert_eq!(valid.server_id(), ID);
    assert_eq!(valid.generation(), 7);
    assert_eq!(valid.domain_name(), format!("flotilla-{ID}"));
    let roles: Vec<_> = valid.spec().disks.iter().map(|(role, _)| role).collect();
    assert_eq!(roles, DiskRole::ALL);
    assert_eq!(valid.into_inner().nics.len(), 2);
}
