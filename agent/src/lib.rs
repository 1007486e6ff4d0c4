//! The driftwatch agent: bake an image manifest, verify a host against it.
//!
//! # Layout
//! - [`policy`]: which paths are excluded and which are runtime zones.
//! - [`scan`]: the parallel walk that records (and hashes) every entry
//!   under a root, reporting what it could not read.
//! - [`hash`]: hashing one file safely (never opening FIFOs or devices,
//!   never following symlinks, noticing files that change while read).
//! - [`packages`]: the installed package set from the root's own dpkg, apk
//!   and rpm databases.
//! - [`bake`]: scan + packages + provenance into a manifest.
//! - [`verify`]: compare a live root with a manifest, both directions.
//! - [`report`]: the verify report as data and as text for operators.
//! - [`summary`]: a manifest at a glance, for `bake` and `inspect`.
//! - [`path`]: how raw byte paths are shown to people and in JSON.
//! - [`throttle`]: the read-rate cap shared by every scan thread.
//! - [`run`]: the long-lived agent: scan every interval, spool the changes
//!   durably, stream them to the collector.

pub mod bake;
pub mod hash;
pub mod packages;
pub mod path;
pub mod policy;
pub mod report;
pub mod run;
pub mod scan;
pub mod summary;
pub mod throttle;
pub mod verify;
