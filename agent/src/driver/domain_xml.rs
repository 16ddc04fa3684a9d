//! Reading back the parts of a libvirt domain definition the drivers need: the name, Flotilla's
//! metadata, the serial console log file and the disk and interface devices. Pure: a string in,
//! values out.
//!
//! The metadata contract (written by `render::domain`):
//!
//! ```xml
//! <metadata>
//!   <flotilla:server xmlns:flotilla="https://flotilla.dev/xmlns/server/1">
//!     <flotilla:id>SERVER-UUID</flotilla:id>
//!     <flotilla:generation>N</flotilla:generation>
//!   </flotilla:server>
//! </metadata>
//! ```
//!
//! with the domain named `flotilla-<SERVER-UUID>`. A domain whose metadata is missing, malformed
//! or names another server than its domain name is not Flotilla's.
use std::path::PathBuf;

use uuid::Uuid;

/// XML namespace of Flotilla's domain metadata.
pub const METADATA_NS: &str = "https://flotilla.dev/xmlns/server/1";
/// Prefix of every Flotilla domain name; the server id follows.
pub const NAME_PREFIX: &str = "flotilla-";

/// Flotilla's metadata on a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerMeta {
    pub server_id: Uuid,
    /// Placement generation (I7): higher on every move of the server.
    pub generation: u64,
}

/// The domain name for a server.
pub fn domain_name(server_id: Uuid) -> String {
    format!("{NAME_PREFIX}{server_id}")
}

/// A disk device of the definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDevice {
    /// `<target dev=…>` (`vda`).
    pub target: String,
    /// `<source file=…>` (or `dev=`), if any.
    pub source: Option<PathBuf>,
}

/// A network interface of the definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicDevice {
    /// `<target dev=…>`: the host-side device (set by libvirt while running, or requested).
    pub target: Option<String>,
    pub mac: Option<String>,
}

/// What the drivers read from a domain definition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DomainXml {
    pub name: String,
    pub uuid: Option<String>,
    /// Flotilla's metadata; `None` when absent or not matching the name (see module doc).
    pub server: Option<ServerMeta>,
    /// Why metadata in Flotilla's namespace was not accepted, when it was present.
    pub metadata_problem: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_kib: Option<u64>,
    pub current_memory_kib: Option<u64>,
    /// `<serial>` (or `<console>`) `<log file=…>`.
    pub console_log: Option<PathBuf>,
    pub disks: Vec<DiskDevice>,
    pub nics: Vec<NicDevice>,
    /// `<os><nvram>` is present.
    pub has_nvram: bool,
}

/// Parses a domain definition. Fails only on XML that is not a `<domain>` with a `<name>`.
pub fn parse(xml: &str) -> Result<DomainXml, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("malformed XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" || root.tag_name().namespace().is_some() {
        return Err(format!(
            "the root element is <{}>, not <domain>",
            root.tag_name().name()
        ));
    }
    let name = child(root, "name")
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or("the definition has no <name>")?;
    let mut out = DomainXml {
        uuid: child(root, "uuid")
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string()),
        vcpus: child(root, "vcpu")
            .and_then(|n| n.text())
            .and_then(|t| t.trim().parse().ok()),
        memory_kib: child(root, "memory").and_then(memory_kib),
        current_memory_kib: child(root, "currentMemory").and_then(memory_kib),
        has_nvram: child(root, "os")
            .and_then(|os| child(os, "nvram"))
            .is_some(),
        ..DomainXml::default()
    };
    match server_meta(root) {
        Ok(Some(meta)) if domain_name(meta.server_id) == name => out.server = Some(meta),
        Ok(Some(meta)) => {
            out.metadata_problem = Some(format!(
                "its Flotilla metadata names server {} but the domain is not named {}",
                meta.server_id,
                domain_name(meta.server_id)
            ))
        }
        Ok(None) => {}
        Err(problem) => out.metadata_problem = Some(problem),
    }
    out.name = name;
    if let Some(devices) = child(root, "devices") {
        for dev in devices.children().filter(|n| n.is_element()) {
            match dev.tag_name().name() {
                "disk" => {
                    if let Some(target) = child(dev, "target").and_then(|t| t.attribute("dev")) {
                        let source = child(dev, "source").and_then(|s| {
                            s.attribute("file")
                                .or_else(|| s.attribute("dev"))
                                .map(PathBuf::from)
                        });
                        out.disks.push(DiskDevice {
                            target: target.to_string(),
                            source,
                        });
                    }
                }
                "interface" => out.nics.push(NicDevice {
                    target: child(dev, "target")
                        .and_then(|t| t.attribute("dev"))
                        .map(str::to_string),
                    mac: child(dev, "mac")
                        .and_then(|t| t.attribute("address"))
                        .map(str::to_string),
                }),
                "serial" | "console" if out.console_log.is_none() => {
                    out.console_log = child(dev, "log")
                        .and_then(|l| l.attribute("file"))
                        .map(PathBuf::from);
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|n| {
        n.is_element() && n.tag_name().name() == name && n.tag_name().namespace().is_none()
    })
}

fn ns_child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|n| {
        n.is_element()
            && n.tag_name().name() == name
            && n.tag_name().namespace() == Some(METADATA_NS)
    })
}

/// `Ok(None)`: no Flotilla metadata. `Err`: present but malformed.
fn server_meta(root: roxmltree::Node<'_, '_>) -> Result<Option<ServerMeta>, String> {
    let Some(server) = child(root, "metadata").and_then(|m| ns_child(m, "server")) else {
        return Ok(None);
    };
    let text = |field: &str| {
        ns_child(server, field)
            .and_then(|n| n.text())
            .map(str::trim)
            .ok_or_else(|| format!("its Flotilla metadata has no <{field}>"))
    };
    let id = text("id")?;
    let server_id = Uuid::parse_str(id)
        .map_err(|_| format!("its Flotilla metadata has a server id that is not a UUID: {id:?}"))?;
    let generation = text("generation")?;
    let generation = generation.parse().map_err(|_| {
        format!("its Flotilla metadata has a generation that is not a number: {generation:?}")
    })?;
    Ok(Some(ServerMeta {
        server_id,
        generation,
    }))
}

/// `<memory unit=…>N</memory>` in KiB (libvirt's units; KiB when no unit is given).
fn memory_kib(node: roxmltree::Node<'_, '_>) -> Option<u64> {
    let value: u64 = node.text()?.trim().parse().ok()?;
    let bytes_per_unit: u64 = match node.attribute("unit").unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    Some(value.checked_mul(bytes_per_unit)? / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6f1c2a9e-8d4b-4c1e-9a57-0b3c2d1e4f5a";

    fn flotilla_xml(name: &str, metadata: &str) -> String {
        format!(
            "<domain type='qemu'><name>{name}</name><uuid>{ID}</uuid>\
             <metadata>{metadata}<other:x xmlns:other='urn:other'/></metadata>\
             <memory unit='MiB'>64</memory><currentMemory>32768</currentMemory><vcpu>2</vcpu>\
             <os><type>hvm</type></os>\
             <devices>\
               <disk type='file' device='disk'><source file='/d/a.qcow2'/><target dev='vda'/></disk>\
               <disk type='file' device='cdrom'><target dev='sda'/></disk>\
               <interface type='ethernet'><mac address='52:54:00:aa:bb:cc'/><target dev='tap0'/></interface>\
               <interface type='user'/>\
               <serial type='pty'><log file='/var/log/c.log' append='on'/></serial>\
             </devices></domain>"
        )
    }

    fn meta(id: &str, generation: &str) -> String {
        format!(
            "<flotilla:server xmlns:flotilla=\"{METADATA_NS}\"><flotilla:id>{id}</flotilla:id>\
             <flotilla:generation>{generation}</flotilla:generation></flotilla:server>"
        )
    }

    #[test]
    fn reads_flotilla_metadata_devices_and_console_log() {
        let xml = flotilla_xml(&format!("flotilla-{ID}"), &meta(ID, "7"));
        let d = parse(&xml).unwrap();
        assert_eq!(d.name, format!("flotilla-{ID}"));
        assert_eq!(
            d.server,
            Some(ServerMeta {
                server_id: ID.parse().unwrap(),
                generation: 7
            })
        );
        assert_eq!(d.metadata_problem, None);
        assert_eq!(d.vcpus, Some(2));
        assert_eq!(d.memory_kib, Some(65536));
        assert_eq!(d.current_memory_kib, Some(32768));
        assert_eq!(d.console_log, Some(PathBuf::from("/var/log/c.log")));
        assert_eq!(
            d.disks,
            vec![
                DiskDevice {
                    target: "vda".into(),
                    source: Some("/d/a.qcow2".into())
                },
                DiskDevice {
                    target: "sda".into(),
                    source: None
                }
            ]
        );
        assert_eq!(d.nics.len(), 2);
        assert_eq!(d.nics[0].target.as_deref(), Some("tap0"));
        assert_eq!(d.nics[0].mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(
            d.nics[1],
            NicDevice {
                target: None,
                mac: None
            }
        );
        assert!(!d.has_nvram);
    }

    #[test]
    fn the_namespace_not_the_prefix_identifies_the_metadata() {
        let other_prefix = format!(
            "<f:server xmlns:f=\"{METADATA_NS}\"><f:id>{ID}</f:id><f:generation>1</f:generation></f:server>"
        );
        let d = parse(&flotilla_xml(&format!("flotilla-{ID}"), &other_prefix)).unwrap();
        assert_eq!(d.server.map(|s| s.generation), Some(1));

        let wrong_ns = format!(
            "<flotilla:server xmlns:flotilla=\"https://example.com/x\"><flotilla:id>{ID}</flotilla:id>\
             <flotilla:generation>1</flotilla:generation></flotilla:server>"
        );
        let d = parse(&flotilla_xml(&format!("flotilla-{ID}"), &wrong_ns)).unwrap();
        assert_eq!(d.server, None);
        assert_eq!(d.metadata_problem, None);
    }

    #[test]
    fn domains_without_or_with_broken_metadata_are_not_flotillas() {
        let d = parse(&flotilla_xml("my-own-vm", "")).unwrap();
        assert_eq!((d.server, d.metadata_problem), (None, None));

        let name = format!("flotilla-{ID}");
        for (metadata, problem) in [
            (meta("not-a-uuid", "1"), "not a UUID"),
            (meta(ID, "-1"), "not a number"),
            (
                format!("<flotilla:server xmlns:flotilla=\"{METADATA_NS}\"/>"),
                "no <id>",
            ),
        ] {
            let d = parse(&flotilla_xml(&name, &metadata)).unwrap();
            assert_eq!(d.server, None, "{metadata}");
            assert!(
                d.metadata_problem.as_deref().unwrap().contains(problem),
                "{:?}",
                d.metadata_problem
            );
        }

        // Metadata of another server than the name says: not trusted.
        let other = "0e4a4d9c-2f0b-4b8e-8a8e-4a3c0c7d1e2f";
        let d = parse(&flotilla_xml(&name, &meta(other, "1"))).unwrap();
        assert_eq!(d.server, None);
        assert!(d.metadata_problem.unwrap().contains(other));
    }

    #[test]
    fn memory_units_follow_libvirt() {
        for (unit, value, kib) in [
            ("", "1024", 1024),
            ("unit='b'", "2048", 2),
            ("unit='KiB'", "5", 5),
            ("unit='M'", "2", 2048),
            ("unit='GiB'", "1", 1 << 20),
            ("unit='MB'", "1", 976),
        ] {
            let xml = format!("<domain><name>x</name><memory {unit}>{value}</memory></domain>");
            assert_eq!(parse(&xml).unwrap().memory_kib, Some(kib), "{unit}");
        }
    }

    #[test]
    fn non_domains_and_nameless_domains_are_errors() {
        assert!(parse("<domain>").unwrap_err().contains("malformed"));
        assert!(parse("<network><name>x</name></network>")
            .unwrap_err()
            .contains("<network>"));
        assert!(parse("<domain><name> </name></domain>")
            .unwrap_err()
            .contains("no <name>"));
        assert!(
            parse("<domain><os><nvram>/x</nvram></os><name>n</name></domain>")
                .unwrap()
                .has_nvram
        );
    }
}
