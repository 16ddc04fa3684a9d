//! `qemu-img` argument vectors (pure). The disks driver runs them without a shell, each path a
//! separate argument.
//!
//! Rules every builder keeps (I9):
//! - The format of every image qemu-img opens is stated (`-f`), and an overlay always pins its
//!   backing file's format (`-F`): qemu-img never probes, so a raw guest disk whose content
//!   looks like a qcow2 header cannot make qemu open files the guest names.
//! - Paths must be absolute, so none is taken for an option (`-x`) or a protocol (`nbd:…`).
use std::ffi::OsString;
use std::fmt;
use std::path::Path;

/// Disk formats images may have (the controller's `DiskFormat`, `ImageDiskFormat` in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskFormat {
    Qcow2,
    Raw,
    Vmdk,
    Vdi,
    Vhd,
    Vhdx,
    Iso,
}

impl DiskFormat {
    pub const ALL: [DiskFormat; 7] = [
        DiskFormat::Qcow2,
        DiskFormat::Raw,
        DiskFormat::Vmdk,
        DiskFormat::Vdi,
        DiskFormat::Vhd,
        DiskFormat::Vhdx,
        DiskFormat::Iso,
    ];

    /// The API name.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Vdi => "vdi",
            DiskFormat::Vhd => "vhd",
            DiskFormat::Vhdx => "vhdx",
            DiskFormat::Iso => "iso",
        }
    }

    /// The name qemu uses for the format (`-f`, `-F`, `-O`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            DiskFormat::Vhd => "vpc",
            // qemu has no ISO 9660 driver: an ISO is a raw image.
            DiskFormat::Iso => "raw",
            other => other.name(),
        }
    }

    /// Parses an API name.
    pub fn from_name(name: &str) -> Option<DiskFormat> {
        DiskFormat::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A path a builder refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("qemu-img paths must be absolute: {0}")]
pub struct RelativePath(pub String);

fn abs(path: &Path) -> Result<OsString, RelativePath> {
    if path.is_absolute() {
        Ok(path.as_os_str().to_owned())
    } else {
        Err(RelativePath(path.display().to_string()))
    }
}

fn args<const N: usize>(fixed: [&str; N]) -> Vec<OsString> {
    fixed.iter().map(OsString::from).collect()
}

/// `qemu-img info --output=json -U -f <format> <path>`: the image's own facts, read with the
/// format pinned. `-U` (force share) lets it read an image a running guest holds open.
pub fn info(path: &Path, format: DiskFormat) -> Result<Vec<OsString>, RelativePath> {
    let mut argv = args(["info", "--output=json", "-U", "-f", format.qemu_name()]);
    argv.push(abs(path)?);
    Ok(argv)
}

/// `qemu-img create -q -f qcow2 -F <base format> -b <base> <disk> [<size_gib>G]`: a qcow2
/// overlay on `base`. Without a size the overlay is as large as the base.
pub fn create_overlay(
    base: &Path,
    base_format: DiskFormat,
    disk: &Path,
    size_gib: Option<u64>,
) -> Result<Vec<OsString>, RelativePath> {
    let mut argv = args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        base_format.qemu_name(),
        "-b",
    ]);
    argv.push(abs(base)?);
    argv.push(abs(disk)?);
    if let Some(gib) = size_gib {
        argv.push(format!("{gib}G").into());
    }
    Ok(argv)
}

/// `qemu-img create -q -f qcow2 <disk> <size_bytes>`: a blank qcow2 disk without a backing file
/// (ephemeral and swap disks). qemu-img rounds the size up to whole 512-byte sectors.
pub fn create_blank(disk: &Path, size_bytes: u64) -> Result<Vec<OsString>, RelativePath> {
    let mut argv = args(["create", "-q", "-f", "qcow2"]);
    argv.push(abs(disk)?);
    argv.push(size_bytes.to_string().into());
    Ok(argv)
}

/// `qemu-img convert -q -f <format> -O <out format> <src> <dst>`: a standalone copy of `src`
/// (its backing chain flattened) in `out_format`. Without `-U`, so it fails rather than copy a
/// disk a running guest is writing.
pub fn convert(
    src: &Path,
    src_format: DiskFormat,
    dst: &Path,
    out_format: DiskFormat,
) -> Result<Vec<OsString>, RelativePath> {
    let mut argv = args([
        "convert",
        "-q",
        "-f",
        src_format.qemu_name(),
        "-O",
        out_format.qemu_name(),
    ]);
    argv.push(abs(src)?);
    argv.push(abs(dst)?);
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(argv: Vec<OsString>) -> Vec<String> {
        argv.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn overlay_pins_the_backing_format_and_keeps_paths_whole() {
        let argv = create_overlay(
            Path::new("/var/cache/flotilla/images/ab cd,x"),
            DiskFormat::Raw,
            Path::new("/var/lib/flotilla/disks/s 1.qcow2"),
            Some(20),
        )
        .unwrap();
        assert_eq!(
            strings(argv),
            [
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                "/var/cache/flotilla/images/ab cd,x",
                "/var/lib/flotilla/disks/s 1.qcow2",
                "20G"
            ]
        );
    }

    #[test]
    fn overlay_without_size_takes_the_base_size_and_vhd_is_vpc_to_qemu() {
        let argv = create_overlay(Path::new("/b"), DiskFormat::Vhd, Path::new("/d"), None);
        assert_eq!(
            strings(argv.unwrap()),
            ["create", "-q", "-f", "qcow2", "-F", "vpc", "-b", "/b", "/d"]
        );
    }

    #[test]
    fn blank_disks_have_no_backing_file_and_an_exact_size() {
        let argv = create_blank(Path::new("/d/s/3/swap.qcow2"), 512 << 20).unwrap();
        assert_eq!(
            strings(argv),
            [
                "create",
                "-q",
                "-f",
                "qcow2",
                "/d/s/3/swap.qcow2",
                "536870912"
            ]
        );
        assert!(create_blank(Path::new("swap.qcow2"), 1).is_err());
    }

    #[test]
    fn every_format_is_pinned_in_info_and_convert() {
        for format in DiskFormat::ALL {
            let argv = strings(info(Path::new("/img"), format).unwrap());
            assert_eq!(
                argv,
                [
                    "info",
                    "--output=json",
                    "-U",
                    "-f",
                    format.qemu_name(),
                    "/img"
                ]
            );
        }
        let argv = convert(
            Path::new("/d/s.qcow2"),
            DiskFormat::Qcow2,
            Path::new("/snap/x.tmp"),
            DiskFormat::Raw,
        );
        assert_eq!(
            strings(argv.unwrap()),
            [
                "convert",
                "-q",
                "-f",
                "qcow2",
                "-O",
                "raw",
                "/d/s.qcow2",
                "/snap/x.tmp"
            ]
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        for path in ["-o", "nbd:localhost:10809", "disk.qcow2", "json:{}"] {
            assert_eq!(
                info(Path::new(path), DiskFormat::Qcow2),
                Err(RelativePath(path.into()))
            );
            assert!(
                create_overlay(Path::new("/b"), DiskFormat::Raw, Path::new(path), None).is_err()
            );
            assert!(
                create_overlay(Path::new(path), DiskFormat::Raw, Path::new("/d"), None).is_err()
            );
            assert!(convert(
                Path::new(path),
                DiskFormat::Qcow2,
                Path::new("/d"),
                DiskFormat::Raw
            )
            .is_err());
        }
    }

    #[test]
    fn api_names_round_trip_and_iso_is_raw_to_qemu() {
        for format in DiskFormat::ALL {
            assert_eq!(DiskFormat::from_name(format.name()), Some(format));
        }
        assert_eq!(DiskFormat::Iso.qemu_name(), "raw");
        assert_eq!(DiskFormat::from_name("vpc"), None);
    }
}
