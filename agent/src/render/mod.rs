//! Pure renderers: they turn checked values into the text the host's tools consume. No I/O
//! here; the drivers hand the output to libvirt (and, later, qemu-img and ovs-vsctl).
//!
//! - [`domain`]: libvirt domain XML for one server ([`domain::render_domain`]).
//! - [`qemu_img`]: `qemu-img` argument vectors (the disks driver runs them).
//!
//! Golden files: the expected outputs live in `agent/src/render/testdata/` and are compared
//! byte for byte. After an intended change to the output, regenerate them with
//!
//! ```text
//! FLOTILLA_UPDATE_GOLDEN=1 cargo test -p flotilla-agent render::
//! ```
//!
//! and review the diff of `testdata/` like any other change.

pub mod domain;
pub mod qemu_img;
