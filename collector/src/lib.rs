//! The driftwatch collector: receives agent streams, keeps the truth about
//! every host, and says which hosts to replace.
//!
//! # Layout
//! - [`access`]: who may report as which host and who may use the fleet
//!   service, from client certificates.
//! - [`config`]: the config file (replacement policy, limits), validated
//!   before anything starts.
//! - [`store`]: the storage interface, and [`store::sqlite`], the embedded
//!   default.
//! - [`ingest`]: the single writer that group-commits every mutation and
//!   answers only once it is durable.
//! - [`wire`]: validation of everything that arrives from the network, and
//!   conversion between protobuf and store records.
//! - [`policy`]: replacement reasons, sticky and derived.
//! - [`query`]: the fleet read side (hosts, reports, the replacement queue).
//! - [`server`]: the gRPC server: agent sessions, the fleet service, health,
//!   reflection, TLS.
//! - [`client`] and [`output`]: the ops command line's side.
//! - [`time`]: Unix seconds, shown as dates and ages.

pub mod access;
pub mod alerts;
pub mod client;
pub mod config;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod policy;
pub mod query;
pub mod queue;
pub mod server;
pub mod store;
pub mod time;
pub mod wire;
