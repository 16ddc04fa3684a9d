//! The Flotilla v1 gRPC contract. Clients depend on this crate only.
//!
//! Conventions (request ids, pagination, stale reads, error metadata) are documented in
//! `flotilla/v1/common.proto`.

pub mod v1 {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("flotilla.v1");
}

/// Encoded `FileDescriptorSet` of every v1 file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flotilla_v1_descriptor.bin"));

/// Metadata key carrying the leader's client address on UNAVAILABLE answers.
pub const LEADER_METADATA_KEY: &str = "x-flotilla-leader";
