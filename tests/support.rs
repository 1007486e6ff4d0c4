//! Shared helpers for end-to-end tests: locate (or build) the real
//! binaries and run them as separate processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod collector;
pub mod running_agent;
pub mod sim;
pub mod tls;

/// The `driftwatch-agent` binary from this workspace's target directory,
/// built on first use if `cargo test` has not built it already.
pub fn agent_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("driftwatch-agent", "driftwatch-agent"))
}

/// The `driftwatch-collector` binary, likewise.
pub fn collector_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("driftwatch-collector", "driftwatch-collector"))
}

fn workspace_bin(name: &str, package: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join(name);
    if !bin.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", package, "--bin", name])
            .args(release.then_some("--release"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building {name} failed");
    }
    assert!(bin.exists(), "{name} not found at {}", bin.display());
    bin
}

/// Runs the agent with `args` and returns its output.
pub fn agent(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(args)
        .output()
        .expect("run driftwatch-agent")
}

/// Runs the agent and parses its standard output as JSON.
pub fn agent_json(args: &[&str]) -> (i32, serde_json::Value) {
    let out = agent(args);
    let code = out.status.code().expect("exit code");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}); exit {code}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

/// Bakes `root` into `manifest` as image `image_id` `image_version`,
/// asserting success, and returns bake's JSON summary.
pub fn bake(
    root: &Path,
    manifest: &Path,
    image_id: &str,
    image_version: &str,
) -> serde_json::Value {
    let (code, summary) = agent_json(&[
        "bake",
        "--root",
        root.to_str().expect("UTF-8 temp path"),
        "--out",
        manifest.to_str().expect("UTF-8 temp path"),
        "--image-id",
        image_id,
        "--image-version",
        image_version,
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "bake failed: {summary:#}");
    summary
}

/// A small multi-threaded runtime for tests that speak gRPC themselves.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs a shell command, panicking with its output if it fails.
pub fn sh(script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this process runs as root (ownership, devices, capabilities and
/// mounts need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A dpkg status stanza.
pub fn dpkg_stanza(name: &str, version: &str, arch: &str) -> String {
    format!(
        "Package: {name}\nStatus: install ok installed\nPriority: optional\nArchitecture: {arch}\nVersion: {version}\nDescription: {name} for tests\n more description\n\n"
    )
}
