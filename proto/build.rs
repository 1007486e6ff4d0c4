//! Compiles the contracts in `proto/` with protox (pure Rust), so building
//! driftwatch never needs a system `protoc`.
//!
//! Besides the Rust types and gRPC stubs, it writes the encoded descriptor
//! set of the gRPC contracts, which the collector serves through server
//! reflection so generic tools (grpcurl, grpcio) can discover the services.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/driftwatch/manifest/v1/manifest.proto",
        "proto/driftwatch/v1/agent.proto",
        "proto/driftwatch/v1/fleet.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("driftwatch_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Byte strings stay `Vec<u8>`: paths are not guaranteed to be UTF-8.
    tonic_prost_build::configure()
        .build_transport(true)
        .compile_fds(descriptors)?;
    Ok(())
}
