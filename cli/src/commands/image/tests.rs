//! Grammar of `flotilla image`: what parses into what, and what is a usage error.

use super::*;
use crate::args::{Cli, Command};
use clap::Parser;

fn parse(args: &[&str]) -> Result<ImageCmd, clap::Error> {
    let mut all = vec!["flotilla", "image"];
    all.extend(args);
    match Cli::try_parse_from(all)?.command {
        Command::Image(cmd) => Ok(cmd),
        other => panic!("unexpected {other:?}"),
    }
}

fn usage_error(args: &[&str]) -> String {
    let err = parse(args).expect_err("a usage error");
    assert_eq!(err.exit_code(), 2, "{err}");
    err.to_string()
}

const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

#[test]
fn create_defaults_to_a_private_bare_qcow2_without_content() {
    let ImageCmd::Create(a) = parse(&["create", "cirros"]).unwrap() else {
        panic!("create")
    };
    assert_eq!(a.name, "cirros");
    assert_eq!(a.file, None);
    assert_eq!(a.disk_format, DiskFormat::Qcow2);
    assert_eq!(a.container_format, ContainerFormat::Bare);
    assert_eq!(a.visibility.get(), v1::ImageVisibility::Unspecified);
    assert_eq!(a.protection.get(), None);
    assert_eq!((a.min_disk, a.min_ram), (0, 0));
    assert!(a.properties.is_empty() && a.project.is_none() && !a.no_progress);
}

#[test]
fn create_takes_every_option() {
    let cmd = parse(&[
        "create",
        "cirros",
        "--file",
        "cirros.img",
        "--disk-format",
        "raw",
        "--container-format",
        "ova",
        "--shared",
        "--min-disk",
        "2",
        "--min-ram",
        "128",
        "--protected",
        "--property",
        "os_distro=cirros",
        "--property",
        "hw_disk_bus=virtio",
        "--checksum",
        SHA,
        "--project",
        "web",
        "--no-progress",
    ])
    .unwrap();
    let ImageCmd::Create(a) = cmd else {
        panic!("create")
    };
    assert_eq!(a.file.as_deref(), Some(std::path::Path::new("cirros.img")));
    assert_eq!(
        v1::ImageDiskFormat::from(a.disk_format),
        v1::ImageDiskFormat::Raw
    );
    assert_eq!(
        v1::ImageContainerFormat::from(a.container_format),
        v1::ImageContainerFormat::Ova
    );
    assert_eq!(a.visibility.get(), v1::ImageVisibility::Shared);
    assert_eq!((a.min_disk, a.min_ram), (2, 128));
    assert_eq!(a.protection.get(), Some(true));
    assert_eq!(a.properties.len(), 2);
    assert_eq!(a.checksum, Some(Checksum::Sha256(SHA.into())));
    assert_eq!(a.project.as_deref(), Some("web"));
    assert!(a.no_progress);
}

#[test]
fn every_disk_format_is_accepted() {
    for f in ["qcow2", "raw", "vmdk", "vdi", "vhd", "vhdx", "iso"] {
        let ImageCmd::Create(a) = parse(&["create", "x", "--disk-format", f]).unwrap() else {
            panic!("create")
        };
        let name = v1::ImageDiskFormat::from(a.disk_format).as_str_name();
        assert_eq!(name, format!("IMAGE_DISK_FORMAT_{}", f.to_uppercase()));
    }
    usage_error(&["create", "x", "--disk-format", "qed"]);
    usage_error(&["create", "x", "--container-format", "docker"]);
}

#[test]
fn conflicting_or_incomplete_flags_are_usage_errors() {
    usage_error(&["create", "x", "--public", "--private"]);
    usage_error(&["create", "x", "--protected", "--unprotected"]);
    usage_error(&["create", "x", "--checksum", SHA]);
    usage_error(&["create", "x", "--property", "novalue"]);
    usage_error(&["upload", "x"]);
    usage_error(&["save", "x"]);
    usage_error(&["set", "x"]);
    usage_error(&["unset", "x"]);
    usage_error(&["delete"]);
    usage_error(&["list", "--shared", "--public"]);
    usage_error(&["list", "--status", "deleted"]);
    usage_error(&["add", "project", "x"]);
    usage_error(&["member", "list"]);
}

#[test]
fn a_checksum_must_be_a_sha256_or_an_md5() {
    let err = usage_error(&["upload", "x", "--file", "f", "--checksum", "abc"]);
    assert!(err.contains("64 hex digits (sha256) or 32 (md5)"), "{err}");
    let md5 = "900150983CD24FB0D6963F7D28E17F72";
    let ImageCmd::Upload(a) = parse(&["upload", "x", "--file", "f", "--checksum", md5]).unwrap()
    else {
        panic!("upload")
    };
    assert_eq!(a.checksum, Some(Checksum::Md5(md5.to_ascii_lowercase())));
}

#[test]
fn save_and_list_parse() {
    let ImageCmd::Save(a) = parse(&["save", "cirros", "--file", "-", "--no-progress"]).unwrap()
    else {
        panic!("save")
    };
    assert_eq!(a.file.as_os_str(), "-");
    assert!(a.no_progress);
    let ImageCmd::List(a) = parse(&[
        "list",
        "--private",
        "--owner",
        "web",
        "--status",
        "killed",
        "--name",
        "cirros",
        "--long",
    ])
    .unwrap() else {
        panic!("list")
    };
    assert_eq!(a.visibility.get(), v1::ImageVisibility::Private);
    assert_eq!(
        a.status.map(v1::ImageStatus::from),
        Some(v1::ImageStatus::Killed)
    );
    assert_eq!(a.owner.as_deref(), Some("web"));
    assert_eq!(a.name.as_deref(), Some("cirros"));
    assert!(a.long);
    let ImageCmd::List(a) = parse(&["list"]).unwrap() else {
        panic!("list")
    };
    assert_eq!(a.visibility.get(), v1::ImageVisibility::Unspecified);
    assert!(a.status.is_none() && !a.long);
}

#[test]
fn set_changes_only_what_is_given() {
    let ImageCmd::Set(a) = parse(&["set", "cirros", "--unprotected"]).unwrap() else {
        panic!("set")
    };
    assert_eq!(a.protection.get(), Some(false));
    assert_eq!(a.visibility.get(), v1::ImageVisibility::Unspecified);
    assert!(a.name.is_none() && a.min_disk.is_none() && a.min_ram.is_none());
    let ImageCmd::Set(a) = parse(&[
        "set",
        "cirros",
        "--name",
        "cirros-0.6",
        "--min-disk",
        "0",
        "--min-ram",
        "256",
        "--public",
        "--property",
        "a=1",
    ])
    .unwrap() else {
        panic!("set")
    };
    assert_eq!(a.name.as_deref(), Some("cirros-0.6"));
    assert_eq!((a.min_disk, a.min_ram), (Some(0), Some(256)));
    assert_eq!(a.visibility.get(), v1::ImageVisibility::Public);
    assert_eq!(a.properties, [("a".to_string(), "1".to_string())]);
    usage_error(&["set", "cirros", "--private", "--shared"]);
}

#[test]
fn unset_delete_and_sharing_parse() {
    let ImageCmd::Unset(a) =
        parse(&["unset", "cirros", "--property", "a", "--property", "b"]).unwrap()
    else {
        panic!("unset")
    };
    assert_eq!(a.properties, ["a", "b"]);
    assert!(matches!(
        parse(&["delete", "a", "b", "c"]).unwrap(),
        ImageCmd::Delete { images } if images.len() == 3
    ));
    assert!(matches!(
        parse(&["add", "project", "cirros", "web"]).unwrap(),
        ImageCmd::Add(AddCmd::Project { image, project }) if image == "cirros" && project == "web"
    ));
    assert!(matches!(
        parse(&["remove", "project", "cirros", "web"]).unwrap(),
        ImageCmd::Remove(RemoveCmd::Project { .. })
    ));
    assert!(matches!(
        parse(&["member", "list", "cirros", "-f", "json"]).unwrap(),
        ImageCmd::Member(MemberCmd::List { image }) if image == "cirros"
    ));
}
