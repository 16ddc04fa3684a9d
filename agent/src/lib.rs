//! `flotilla-agent` as a library: the compute agent's modules, used by its binary and tests.

pub mod driver;
pub mod reconcile;
pub mod render;
