//! Compiles the contracts in `proto/` with protox (pure Rust), so building
//! driftwatch never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/driftwatch/manifest/v1/manifest.proto"];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        // Byte strings stay `Vec<u8>`: paths are not guaranteed to be UTF-8.
        .compile_fds(descriptors)?;
    Ok(())
}
