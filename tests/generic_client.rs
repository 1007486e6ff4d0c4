//! A client from outside this codebase: Python grpcio with the health and
//! reflection packages from PyPI (pinned in python/requirements.txt) checks
//! the collector's health and discovers its services by reflection alone.
//!
//! The virtualenv lives in the target directory and is created on first
//! use (`.ci/run` makes sure python3 with venv support is installed).

use std::path::{Path, PathBuf};
use std::process::Command;

use driftwatch_e2e::collector::Collector;

fn venv() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).expect("target dir").to_path_buf();
    let venv = target.join("grpc-venv");
    let python = venv.join("bin/python");
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let requirements = here.join("requirements.txt");
    let stamp = venv.join("requirements.txt");
    let wanted = std::fs::read(&requirements).unwrap();
    if std::fs::read(&stamp).ok().as_ref() != Some(&wanted) {
        let _ = std::fs::remove_dir_all(&venv);
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap_or_else(|e| {
                panic!("cannot run {cmd:?}: {e}; this test needs python3 with venv and pip")
            });
            assert!(
                out.status.success(),
                "{cmd:?} failed (this test needs python3 with venv, and PyPI):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements));
        std::fs::write(&stamp, wanted).unwrap();
    }
    python
}

#[test]
fn python_grpcio_checks_health_and_lists_services_by_reflection() {
    let python = venv();
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/generic_client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(collector.addr.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    for expected in [
        "health (server) SERVING",
        "health driftwatch.v1.AgentService SERVING",
        "health driftwatch.v1.FleetService SERVING",
        "service driftwatch.v1.AgentService",
        "service driftwatch.v1.FleetService",
        "service grpc.health.v1.Health",
        "method driftwatch.v1.AgentService/Session driftwatch.v1.AgentMessage",
        "method driftwatch.v1.FleetService/ListReplacements driftwatch.v1.ListReplacementsRequest",
        "method driftwatch.v1.FleetService/RetireHost driftwatch.v1.HostRequest",
    ] {
        assert!(
            lines.contains(&expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
