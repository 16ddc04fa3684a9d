//! The controller's `DesiredState` as the planner's [`Desired`] (pure).
//!
//! Each `DesiredServer` becomes a [`Target`]: its domain spec (name, vCPUs, RAM, disks under the
//! [`DiskLayout`], console log under the state directory, the configured domain type) and its
//! base image. Sizes: the root disk is `root_disk_gib` GiB (0: the image's size), ephemeral
//! `ephemeral_gib` GiB, swap `swap_mib` MiB; the last two only when non-zero.
//!
//! Boot: from the root disk, unless the flavor's extra spec [`KERNEL_EXTRA_SPEC`] names a kernel
//! of the agent's configuration (`[kernels.NAME]`), which QEMU then loads directly (the image is
//! still `vda`). A name this host does not know is an error for that server.
//!
//! NICs: one per port, in the desired state's order, on the integration bridge
//! (`<interface type='bridge'>` with `<virtualport type='openvswitch'>`, `iface-id` = the port
//! id): libvirt plugs the guest's tap into the bridge when the domain starts, and the network
//! reconcile ([`crate::net`]) wires it (local VLAN tag, flows, DHCP) once it sees the interface.
//!
//! A server listed with `incoming_migration` (being migrated in) is held: the planner neither
//! builds, starts nor removes anything of it until ownership moves and the flag is cleared.
//!
//! A server that cannot be mapped (an unknown image format, a bad digest, a kernel this host
//! lacks, a spec the renderer refuses) is held — the planner leaves its local copy alone rather
//! than remove it as unwanted — and its error is reported to the controller, which reschedules
//! a boot that fails this way.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use flotilla_proto::v1 as pb;

use crate::config::KernelConfig;
use crate::reconcile::{BaseImage, Desired, DiskLayout, Power, Target};
use crate::render::domain::{
    Boot, CpuMode, DiskCache, DiskRole, DiskSpec, Disks, DomainSpec, DomainType, Nic,
};
use crate::render::qemu_img::DiskFormat;

/// Flavor extra spec naming a kernel of the agent's `[kernels]` for direct kernel boot.
pub const KERNEL_EXTRA_SPEC: &str = "flotilla:kernel";

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Host settings the mapping needs (from the agent's configuration).
#[derive(Debug, Clone)]
pub struct Mapping {
    pub domain_type: DomainType,
    pub disk_cache: DiskCache,
    /// Where disks go (the disks driver's layout).
    pub layout: DiskLayout,
    /// Base of relative `console_log_path`s.
    pub state_dir: PathBuf,
    /// Where console logs go by default: `<console_dir>/<server id>.log`.
    pub console_dir: PathBuf,
    pub kernels: BTreeMap<String, KernelConfig>,
    /// The Open vSwitch bridge guests' NICs are plugged into (`[network] integration_bridge`).
    pub integration_bridge: String,
}

/// A desired state as the planner sees it.
#[derive(Debug, Clone, Default)]
pub struct Mapped {
    pub desired: Desired,
    /// Servers that could not be mapped (held): id → (generation, why).
    pub errors: BTreeMap<String, (u64, String)>,
}

impl Mapping {
    /// Maps a whole desired state; `held` servers (an operation command works on them) are
    /// left alone by the planner.
    pub fn desired(&self, state: &pb::DesiredState, held: &BTreeSet<String>) -> Mapped {
        let mut out = Mapped::default();
        for id in held {
            out.desired.hold(id.clone());
        }
        for s in &state.servers {
            if s.incoming_migration {
                // Being migrated in: what PrepareMigration made and the domain libvirt brings
                // in are the migration's until ownership moves.
                out.desired.hold(s.id.clone());
                continue;
            }
            match self.target(s) {
                Ok(target) => {
                    out.desired.keep(target);
                }
                Err(why) => {
                    out.desired.hold(s.id.clone());
                    out.errors
                        .insert(s.id.clone(), (s.placement_generation, why));
                }
            }
        }
        out
    }

    /// The target of one server.
    pub fn target(&self, s: &pb::DesiredServer) -> Result<Target, String> {
        let image = base_image(s)?;
        let generation = s.placement_generation;
        let disk = |role: DiskRole, size_bytes: u64| DiskSpec {
            path: self.layout.disk_path(&s.id, generation, role),
            size_bytes,
        };
        let gib = |n: u64| {
            n.checked_mul(GIB)
                .ok_or_else(|| format!("a disk of {n} GiB is too large"))
        };
        let disks = Disks {
            root: disk(DiskRole::Root, gib(s.root_disk_gib)?),
            ephemeral: match s.ephemeral_gib {
                0 => None,
                n => Some(disk(DiskRole::Ephemeral, gib(n)?)),
            },
            swap: match s.swap_mib {
                0 => None,
                n => Some(disk(
                    DiskRole::Swap,
                    n.checked_mul(MIB)
                        .ok_or_else(|| format!("a swap disk of {n} MiB is too large"))?,
                )),
            },
            cache: self.disk_cache,
        };
        let spec = DomainSpec {
            domain_type: self.domain_type,
            cpu: CpuMode::default_for(self.domain_type),
            server_id: s.id.clone(),
            name: s.name.clone(),
            generation,
            ram_mib: s.ram_mib,
            vcpus: s.vcpus,
            boot: self.boot(s)?,
            disks,
            nics: self.nics(s),
            console_log: self.console_log(s)?,
        };
        let domain = spec
            .validate()
            .map_err(|e| format!("the server's domain cannot be defined: {e}"))?;
        let power = match pb::ServerPowerState::try_from(s.power_state) {
            Ok(pb::ServerPowerState::Running) => Power::Running,
            _ => Power::ShutOff,
        };
        Ok(Target {
            power,
            image,
            domain,
        })
    }

    fn nics(&self, s: &pb::DesiredServer) -> Vec<Nic> {
        s.ports
            .iter()
            .map(|p| Nic::OvsBridge {
                bridge: self.integration_bridge.clone(),
                port_id: p.port_id.clone(),
                mac: p.mac_address.clone(),
                mtu: (p.mtu != 0).then_some(p.mtu),
            })
            .collect()
    }

    fn boot(&self, s: &pb::DesiredServer) -> Result<Boot, String> {
        let Some(name) = s.extra_specs.get(KERNEL_EXTRA_SPEC) else {
            return Ok(Boot::Disk);
        };
        let k = self.kernels.get(name).ok_or_else(|| {
            format!(
                "the flavor asks for kernel {name:?} ({KERNEL_EXTRA_SPEC}), which this host does \
                 not have (agent config [kernels])"
            )
        })?;
        Ok(Boot::Kernel {
            kernel: k.kernel.clone(),
            initrd: k.initrd.clone(),
            cmdline: k.cmdline.clone(),
        })
    }

    fn console_log(&self, s: &pb::DesiredServer) -> Result<PathBuf, String> {
        if s.console_log_path.is_empty() {
            return Ok(self.console_dir.join(format!("{}.log", s.id)));
        }
        let rel = Path::new(&s.console_log_path);
        let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(format!(
                "console log path {:?} must be relative to the agent's state directory, without \
                 `..`",
                s.console_log_path
            ));
        }
        Ok(self.state_dir.join(rel))
    }
}

/// The server's base image, checked.
pub fn base_image(s: &pb::DesiredServer) -> Result<BaseImage, String> {
    image(
        &s.image_id,
        &s.image_sha256,
        s.image_size_bytes,
        s.image_disk_format,
    )
}

/// A base image from its wire fields, checked.
pub fn image(id: &str, sha256: &str, size_bytes: u64, format: i32) -> Result<BaseImage, String> {
    let hex = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return Err(format!(
            "image {id} has no valid sha256 ({sha256:?}); it cannot be verified"
        ));
    }
    Ok(BaseImage {
        image_id: id.to_owned(),
        sha256: sha256.to_owned(),
        format: disk_format(format)
            .ok_or_else(|| format!("image {id} has no disk format this host can use"))?,
        size_bytes,
    })
}

/// An `ImageDiskFormat` as a [`DiskFormat`]; `None` for UNSPECIFIED and unknown values.
pub fn disk_format(format: i32) -> Option<DiskFormat> {
    use pb::ImageDiskFormat as F;
    Some(match F::try_from(format).ok()? {
        F::Qcow2 => DiskFormat::Qcow2,
        F::Raw => DiskFormat::Raw,
        F::Vmdk => DiskFormat::Vmdk,
        F::Vdi => DiskFormat::Vdi,
        F::Vhd => DiskFormat::Vhd,
        F::Vhdx => DiskFormat::Vhdx,
        F::Iso => DiskFormat::Iso,
        F::Unspecified => return None,
    })
}

/// The wire value of a [`DiskFormat`].
pub fn disk_format_to_pb(format: DiskFormat) -> pb::ImageDiskFormat {
    use pb::ImageDiskFormat as F;
    match format {
        DiskFormat::Qcow2 => F::Qcow2,
        DiskFormat::Raw => F::Raw,
        DiskFormat::Vmdk => F::Vmdk,
        DiskFormat::Vdi => F::Vdi,
        DiskFormat::Vhd => F::Vhd,
        DiskFormat::Vhdx => F::Vhdx,
        DiskFormat::Iso => F::Iso,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::Wanted;

    const ID: &str = "6f1c1d2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f";
    const OTHER: &str = "11111111-2222-4333-8444-555555555555";

    fn mapping() -> Mapping {
        let mut kernels = BTreeMap::new();
        kernels.insert(
            "tiny".to_owned(),
            KernelConfig {
                kernel: "/srv/vmlinuz".into(),
                initrd: Some("/srv/initrd.gz".into()),
                cmdline: "console=ttyS0 quiet".into(),
            },
        );
        Mapping {
            integration_bridge: "br-int".into(),
            domain_type: DomainType::Qemu,
            disk_cache: DiskCache::Writeback,
            layout: DiskLayout::new("/state/disks"),
            state_dir: "/state".into(),
            console_dir: "/state/console".into(),
            kernels,
        }
    }

    fn server(id: &str) -> pb::DesiredServer {
        pb::DesiredServer {
            id: id.into(),
            name: "web <1>".into(),
            project_id: "p".into(),
            vcpus: 2,
            ram_mib: 512,
            root_disk_gib: 3,
            image_id: "img-1".into(),
            image_sha256: "ab".repeat(32),
            image_size_bytes: 1234,
            image_disk_format: pb::ImageDiskFormat::Qcow2 as i32,
            placement_generation: 4,
            power_state: pb::ServerPowerState::Running as i32,
            ..Default::default()
        }
    }

    fn keep(m: &Mapped, id: &str) -> Target {
        match m.desired.get(id) {
            Some(Wanted::Keep(t)) => (**t).clone(),
            other => panic!("{id}: expected Keep, got {other:?}"),
        }
    }

    #[test]
    fn a_server_maps_to_its_domain_disks_and_base() {
        let state = pb::DesiredState {
            revision: 9,
            servers: vec![server(ID)],
            ..Default::default()
        };
        let m = mapping().desired(&state, &BTreeSet::new());
        assert!(m.errors.is_empty());
        let t = keep(&m, ID);
        assert_eq!(t.power, Power::Running);
        assert_eq!(
            t.image,
            BaseImage {
                image_id: "img-1".into(),
                sha256: "ab".repeat(32),
                format: DiskFormat::Qcow2,
                size_bytes: 1234
            }
        );
        let spec = t.domain.spec();
        assert_eq!(
            (
                spec.server_id.as_str(),
                spec.generation,
                spec.vcpus,
                spec.ram_mib
            ),
            (ID, 4, 2, 512)
        );
        assert_eq!(spec.name, "web <1>");
        assert_eq!(spec.domain_type, DomainType::Qemu);
        assert_eq!(spec.cpu, CpuMode::Qemu64);
        assert_eq!(spec.boot, Boot::Disk);
        assert!(spec.nics.is_empty());
        assert_eq!(
            spec.disks.root,
            DiskSpec {
                path: format!("/state/disks/{ID}/4/root.qcow2").into(),
                size_bytes: 3 * GIB
            }
        );
        assert_eq!((&spec.disks.ephemeral, &spec.disks.swap), (&None, &None));
        assert_eq!(spec.disks.cache, DiskCache::Writeback);
        assert_eq!(
            spec.console_log,
            PathBuf::from(format!("/state/console/{ID}.log"))
        );
    }

    #[test]
    fn scratch_disks_sizes_power_and_kernels_follow_the_flavor() {
        let mut s = server(ID);
        s.ephemeral_gib = 2;
        s.swap_mib = 256;
        s.root_disk_gib = 0;
        s.power_state = pb::ServerPowerState::Shutdown as i32;
        s.extra_specs
            .insert(KERNEL_EXTRA_SPEC.into(), "tiny".into());
        s.console_log_path = "logs/x.log".into();
        let t = mapping().target(&s).unwrap();
        assert_eq!(t.power, Power::ShutOff);
        let spec = t.domain.spec();
        assert_eq!(spec.disks.root.size_bytes, 0, "0: the image's size");
        let eph = spec.disks.ephemeral.as_ref().unwrap();
        assert_eq!(
            (eph.path.clone(), eph.size_bytes),
            (
                PathBuf::from(format!("/state/disks/{ID}/4/ephemeral.qcow2")),
                2 * GIB
            )
        );
        let swap = spec.disks.swap.as_ref().unwrap();
        assert_eq!(swap.size_bytes, 256 * MIB);
        assert!(swap.path.ends_with("4/swap.qcow2"));
        assert_eq!(
            spec.boot,
            Boot::Kernel {
                kernel: "/srv/vmlinuz".into(),
                initrd: Some("/srv/initrd.gz".into()),
                cmdline: "console=ttyS0 quiet".into()
            }
        );
        assert_eq!(spec.console_log, PathBuf::from("/state/logs/x.log"));
    }

    #[test]
    fn unmappable_servers_are_held_and_reported_not_removed() {
        let mut bad_kernel = server(ID);
        bad_kernel
            .extra_specs
            .insert(KERNEL_EXTRA_SPEC.into(), "huge".into());
        let mut bad_digest = server(OTHER);
        bad_digest.image_sha256 = "not-a-digest".into();
        let mut bad_format = server("22222222-2222-4333-8444-555555555555");
        bad_format.image_disk_format = 0;
        let mut escaping = server("33333333-2222-4333-8444-555555555555");
        escaping.console_log_path = "../../etc/shadow".into();
        let mut bad_id = server("not-a-uuid");
        bad_id.placement_generation = 7;
        let state = pb::DesiredState {
            servers: vec![bad_kernel, bad_digest, bad_format, escaping, bad_id],
            ..Default::default()
        };
        let m = mapping().desired(&state, &BTreeSet::new());
        for (id, needle) in [
            (ID, "kernel \"huge\""),
            (OTHER, "sha256"),
            ("22222222-2222-4333-8444-555555555555", "disk format"),
            ("33333333-2222-4333-8444-555555555555", "console log path"),
            ("not-a-uuid", "UUID"),
        ] {
            assert!(m.desired.is_held(id), "{id} held");
            assert!(m.desired.get(id).is_none(), "{id} has no wish");
            let (_, why) = &m.errors[id];
            assert!(why.contains(needle), "{id}: {why}");
        }
        assert_eq!(m.errors["not-a-uuid"].0, 7, "the generation it applies to");
    }

    #[test]
    fn held_servers_stay_held_whatever_is_desired() {
        let state = pb::DesiredState {
            servers: vec![server(ID), server(OTHER)],
            ..Default::default()
        };
        let held: BTreeSet<String> = [ID.to_owned()].into();
        let m = mapping().desired(&state, &held);
        assert!(m.desired.is_held(ID) && !m.desired.is_held(OTHER));
        keep(&m, OTHER);
    }

    #[test]
    fn incoming_migrations_are_held_until_ownership_moves() {
        let mut incoming = server(ID);
        incoming.incoming_migration = true;
        let state = pb::DesiredState {
            servers: vec![incoming.clone(), server(OTHER)],
            ..Default::default()
        };
        let m = mapping().desired(&state, &BTreeSet::new());
        assert!(m.desired.is_held(ID), "the incoming server is held");
        assert!(m.desired.get(ID).is_none(), "nothing is wanted of it yet");
        assert!(m.errors.is_empty());
        keep(&m, OTHER);
        incoming.incoming_migration = false;
        let moved = pb::DesiredState {
            servers: vec![incoming],
            ..Default::default()
        };
        let m = mapping().desired(&moved, &BTreeSet::new());
        assert!(!m.desired.is_held(ID));
        assert_eq!(
            keep(&m, ID).generation(),
            4,
            "adopted at its new generation"
        );
    }

    #[test]
    fn every_wire_format_round_trips() {
        for f in DiskFormat::ALL {
            assert_eq!(disk_format(disk_format_to_pb(f) as i32), Some(f));
        }
        assert_eq!(disk_format(0), None);
        assert_eq!(disk_format(99), None);
    }
}
