//! The contracts that the driftwatch agent and collector must agree on.
//!
//! # Layout
//! - [`manifest`]: the image manifest as domain types ([`Manifest`], [`Entry`],
//!   [`Package`], ...), the glue to and from protobuf, and the on-disk codec
//!   with its digest and format-version check ([`manifest::codec`]).
//! - [`drift`]: the one definition of `drift_pct`, shared so the agent's
//!   report and the collector's fleet view can never disagree.
//! - [`patterns`]: path globs with prefix semantics, one rule for every
//!   policy (agent exclusions and runtime zones, collector critical paths).
//! - [`text`]: bytes and errors as text for people (escaped paths).
//! - [`pb`]: the generated protobuf types and gRPC stubs. The manifest types
//!   stay at the edge (the rest of driftwatch speaks the domain types); the
//!   `driftwatch.v1` services (`agent.proto`, `fleet.proto`) are the wire
//!   contract between agents, the collector and fleet tools.

pub mod drift;
pub mod manifest;
pub mod patterns;
pub mod text;

mod generated {
    #![allow(missing_debug_implementations, clippy::all)]
    pub mod manifest_v1 {
        include!(concat!(env!("OUT_DIR"), "/driftwatch.manifest.v1.rs"));
    }
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/driftwatch.v1.rs"));
    }
}

/// Generated protobuf types, grouped by contract.
pub mod pb {
    /// `driftwatch.manifest.v1`
    pub use crate::generated::manifest_v1 as manifest;
    /// `driftwatch.v1`: the agent session and fleet services.
    pub use crate::generated::v1;

    /// The encoded `FileDescriptorSet` of every contract, for server
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/driftwatch_descriptor.bin"));
}

pub use drift::{DriftCounts, drift_pct};
pub use manifest::{
    Digest, Entry, EntryKind, Manifest, Package, PackageDatabase, PackageManager, PolicySpec,
    Provenance, Unverified,
};
