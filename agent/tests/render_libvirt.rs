//! The renderer's golden files against real libvirt tools: libvirt's own RelaxNG schema
//! (`virt-xml-validate`) and libvirt's test driver (`virsh -c test:///default`), which parses the
//! XML with the same code as a real host, defines and starts the domain and gives the metadata
//! back. The tools come with `deploy/install-deps.sh`; where they are missing each test says so
//! and passes without checking.

use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_agent::render::domain::METADATA_NAMESPACE;

fn golden_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/render/testdata");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read testdata")
        .map(|entry| entry.expect("testdata entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "golden files missing from {}",
        dir.display()
    );
    files
}

/// Whether `program` runs at all (`--version`).
fn available(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("{program} is not installed: check skipped (deploy/install-deps.sh installs it)");
    }
    found
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run the tool");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn golden_domains_validate_against_the_libvirt_schema() {
    if !available("xmllint") || !available("virt-xml-validate") {
        return;
    }
    for file in golden_files() {
        run(Command::new("virt-xml-validate").arg(&file).arg("domain"));
    }
}

#[test]
fn golden_domains_define_and_start_in_the_libvirt_test_driver() {
    if !available("virsh") {
        return;
    }
    for file in golden_files() {
        let xml = std::fs::read_to_string(&file).expect("read golden file");
        let doc = roxmltree::Document::parse(&xml).expect("well-formed");
        let name = doc
            .root_element()
            .children()
            .find(|n| n.has_tag_name("name"))
            .and_then(|n| n.text())
            .expect("domain name")
            .to_owned();
        let generation = doc
            .descendants()
            .find(|n| n.has_tag_name((METADATA_NAMESPACE, "generation")))
            .and_then(|n| n.text())
            .expect("metadata generation")
            .to_owned();
        // One virsh session: the test driver's state lives as long as its connection.
        let script = format!(
            "define '{file}'; start {name}; domstate {name}; metadata {name} {METADATA_NAMESPACE}",
            file = file.display()
        );
        let out = run(Command::new("virsh").args(["-q", "-c", "test:///default", &script]));
        assert!(
            out.contains("running"),
            "{}: not running:\n{out}",
            file.display()
        );
        assert!(
            out.contains(&format!("<generation>{generation}</generation>")),
            "{}: metadata did not round-trip:\n{out}",
            file.display()
        );
    }
}
