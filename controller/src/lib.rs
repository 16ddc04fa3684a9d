//! The Flotilla controller: a replicated, deterministic state machine (Raft on sled) behind a
//! gRPC API.
//!
//! * [`state`] — the pure state machine (`apply(index, command) -> outcome`), no I/O.
//! * [`raft`] — the Raft node (one owner thread), sled storage and peer transport.
//! * [`api`] — tonic services, authentication, proto↔domain conversion, error mapping.
//! * [`server`] — wires it all together for `flotilla-controller run`.
pub mod api;
pub mod certs;
pub mod config;
pub mod images;
pub mod raft;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod telemetry;
