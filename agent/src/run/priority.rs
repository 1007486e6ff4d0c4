//! Making the agent the last in line for CPU and disk.
//!
//! The agent runs beside the workload it watches and must not be felt by
//! it: CPU nice 19, and the idle IO scheduling class, which gets the disk
//! only when nobody else wants it. On Linux both are per thread and
//! inherited by threads created afterwards, so [`lower`] must run before
//! the async runtime and the scan threads start: then every thread of the
//! agent has them.
//!
//! Neither rustix nor std offers `ioprio_set`, and the workspace forbids
//! `unsafe`; the one crate that wraps it (`ioprio`) was last released in
//! 2021 and pulls `nix` 0.21. So the IO class is set by util-linux's `ionice`, present on
//! every distribution that has a shell, run by absolute path (never looked
//! up in `PATH`) on this process before any other thread exists. Where it
//! is missing or not permitted the agent says so and goes on: an agent at
//! normal IO priority beats no agent. `--max-read-rate` caps reading either
//! way.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// The CPU nice value the agent runs at: the lowest priority.
pub const NICE: i32 = 19;

/// Where `ionice` is looked for, in order.
const IONICE: [&str; 2] = ["/usr/bin/ionice", "/bin/ionice"];

/// Why a priority could not be lowered.
#[derive(Debug, thiserror::Error)]
pub enum PriorityError {
    #[error("setpriority: {0}")]
    Nice(io::Error),
    #[error("ionice not found at {}", IONICE.join(" or "))]
    NoIonice,
    #[error("cannot run {path}: {source}")]
    Spawn { path: String, source: io::Error },
    #[error("{path} failed: {message}")]
    Ionice { path: String, message: String },
}

/// What [`lower`] achieved, each part on its own: one may fail while the
/// other works.
#[derive(Debug)]
pub struct Lowered {
    pub nice: Result<(), PriorityError>,
    pub io_idle: Result<(), PriorityError>,
}

/// Sets this process to nice [`NICE`] and the idle IO class. Call it before
/// starting any thread (see the module docs).
pub fn lower() -> Lowered {
    Lowered {
        nice: set_nice(),
        io_idle: set_io_idle(),
    }
}

fn set_nice() -> Result<(), PriorityError> {
    rustix::process::setpriority_process(None, NICE).map_err(|e| PriorityError::Nice(e.into()))
}

fn set_io_idle() -> Result<(), PriorityError> {
    let path = IONICE
        .iter()
        .find(|p| Path::new(p).is_file())
        .ok_or(PriorityError::NoIonice)?;
    let output = Command::new(path)
        .args(["-c", "3", "-p", &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| PriorityError::Spawn {
            path: path.to_string(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(PriorityError::Ionice {
            path: path.to_string(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}
