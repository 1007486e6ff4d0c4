//! The contracts that the driftwatch agent and collector must agree on.
//!
//! # Layout
//! - [`manifest`]: the image manifest as domain types ([`Manifest`], [`Entry`],
//!   [`Package`], ...), the glue to and from protobuf, and the on-disk codec
//!   with its digest and format-version check ([`manifest::codec`]).
//! - [`drift`]: the one definition of `drift_pct`, shared so the agent's
//!   report and the collector's fleet view can never disagree.
//! - [`pb`]: the generated protobuf types. They stay at the edge: the rest of
//!   driftwatch speaks the domain types and converts with `From`/`TryFrom`.

pub mod drift;
pub mod manifest;

mod generated {
    #![allow(missing_debug_implementations, clippy::all)]
    pub mod manifest_v1 {
        include!(concat!(env!("OUT_DIR"), "/driftwatch.manifest.v1.rs"));
    }
}

/// Generated protobuf types, grouped by contract.
pub mod pb {
    /// `driftwatch.manifest.v1`
    pub use crate::generated::manifest_v1 as manifest;
}

pub use drift::{DriftCounts, drift_pct};
pub use manifest::{
    Digest, Entry, EntryKind, Manifest, Package, PackageDatabase, PackageManager, PolicySpec,
    Provenance, Unverified,
};
