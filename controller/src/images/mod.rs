//! The image service's building blocks, below the gRPC layer.
//!
//! * [`blobs`] — a content-addressed blob store on the controller's disk: streaming uploads
//!   hashed on the fly (sha256 + md5), atomic publication under `sha256/<xx>/<digest>`,
//!   re-verification and safe garbage collection.
//! * [`inspect`] — runs `qemu-img info --output=json` on an uploaded blob and checks the result
//!   against invariant I9 ("Safe disks"): the declared format must match the probed one, and
//!   images must be self-contained (no backing file, no external data file, no VMDK extents in
//!   other files, no encryption).
//!
//! Both do blocking file and process I/O: async callers run them in
//! `tokio::task::spawn_blocking`.
pub mod blobs;
pub mod inspect;
pub mod peers;
pub mod runtime;
pub mod stream;

pub use blobs::{BlobError, BlobInfo, BlobStore, BlobWriter, Expected, GcReport};
pub use inspect::{check, DiskFormat, ImageFacts, InspectError, Inspector, UnsafeImage};
pub use runtime::ImageRuntime;
