//! CLI tests: the real `driftwatch-agent` binary over real temporary trees,
//! one test per kind of bad input the agent must survive.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_driftwatch-agent");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn run_json(args: &[&str]) -> (i32, serde_json::Value) {
    let out = run(args);
    let code = out.status.code().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}), exit {code}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

fn sh(script: &str) {
    let out = Command::new("sh").arg("-ec").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A temporary image root and a manifest path beside it.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root/etc")).unwrap();
        std::fs::write(dir.path().join("root/etc/motd"), b"hello\n").unwrap();
        Fixture { dir }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn manifest(&self) -> PathBuf {
        self.dir.path().join("image.dwm")
    }
    fn r(&self) -> String {
        self.root().display().to_string()
    }
    fn m(&self) -> String {
        self.manifest().display().to_string()
    }
    fn bake(&self, extra: &[&str]) -> serde_json::Value {
        self.bake_expecting(0, extra)
    }
    /// Bakes and checks the exit code: 3 when some entries could not be
    /// recorded.
    fn bake_expecting(&self, expected: i32, extra: &[&str]) -> serde_json::Value {
        let (r, m) = (self.r(), self.m());
        let mut args = vec!["bake", "--root", &r, "--out", &m, "--format", "json"];
        args.extend_from_slice(extra);
        let (code, json) = run_json(&args);
        assert_eq!(code, expected, "bake exit code: {json}");
        json
    }
    fn verify(&self, extra: &[&str]) -> (i32, serde_json::Value) {
        let (r, m) = (self.r(), self.m());
        let mut args = vec!["verify", "--root", &r, "--manifest", &m, "--format", "json"];
        args.extend_from_slice(extra);
        run_json(&args)
    }
}

fn deviations(report: &serde_json::Value) -> Vec<(String, String)> {
    report["deviations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().into(),
                d["path"].as_str().or(d["package"].as_str()).unwrap().into(),
            )
        })
        .collect()
}

fn not_verified(report: &serde_json::Value) -> Vec<(String, String)> {
    report["not_verified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["path"].as_str().unwrap().into(),
                u["reason"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[test]
fn corrupt_and_truncated_manifests_are_clear_errors() {
    let f = Fixture::new();
    f.bake(&[]);
    let good = std::fs::read(f.manifest()).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_vec(), "manifest"),
        ("header only", good[..10].to_vec(), "truncated"),
        ("empty", Vec::new(), "truncated"),
        (
            "not ours",
            b"#!/bin/sh\necho hi\n".to_vec(),
            "not a driftwatch manifest",
        ),
        (
            "flipped byte",
            {
                let mut b = good.clone();
                let i = b.len() - 50;
                b[i] ^= 1;
                b
            },
            "corrupt",
        ),
    ];
    for (name, bytes, message) in cases {
        std::fs::write(f.manifest(), &bytes).unwrap();
        for args in [
            vec!["verify", "--root", &f.r(), "--manifest", &f.m()],
            vec!["inspect", &f.m()],
        ] {
            let out = run(&args.iter().map(|s| s.as_ref()).collect::<Vec<&str>>());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
            assert!(
                stderr.contains(message),
                "{name}: expected {message:?} in {stderr:?}"
            );
            assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        }
    }
}

#[test]
fn a_manifest_from_a_newer_format_asks_for_an_upgrade() {
    let f = Fixture::new();
    f.bake(&[]);
    let mut bytes = std::fs::read(f.manifest()).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(f.manifest(), &bytes).unwrap();
    let out = run(&["verify", "--root", &f.r(), "--manifest", &f.m()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("version 2 is newer") && stderr.contains("upgrade"),
        "{stderr}"
    );
}

#[test]
fn unusable_roots_and_policies_exit_2() {
    let f = Fixture::new();
    let out = run(&["bake", "--root", "/nonexistent/root", "--out", &f.m()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/root"));
    let policy = f.dir.path().join("policy.toml");
    std::fs::write(&policy, "exclude = [\"opt\"]\nexclde = [\"typo\"]\n").unwrap();
    let out = run(&[
        "bake",
        "--root",
        &f.r(),
        "--out",
        &f.m(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("exclde"), "{stderr}");
    assert!(
        !f.manifest().exists(),
        "no manifest is written when the policy is bad"
    );
}

#[test]
fn bake_is_deterministic() {
    let f = Fixture::new();
    sh(&format!(
        "cd {} && mkdir -p a/b c && echo 1 > a/b/x && echo 2 > c/y && ln -s a/b/x z && ln c/y c/hard",
        f.r()
    ));
    let baked = |threads: &str| {
        let out = Command::new(BIN)
            .args([
                "bake",
                "--root",
                &f.r(),
                "--out",
                &f.m(),
                "--format",
                "json",
                "--threads",
                threads,
            ])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(out.status.success());
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            std::fs::read(f.manifest()).unwrap(),
            json["digest"].as_str().unwrap().to_string(),
        )
    };
    let (one, digest_one) = baked("1");
    let (eight, digest_eight) = baked("8");
    assert_eq!(
        one, eight,
        "same tree and policy must give a byte-identical manifest"
    );
    assert_eq!(digest_one, digest_eight);
    // Without a pinned build time the bytes differ, the digest does not.
    std::thread::sleep(Duration::from_millis(1100));
    let later = f.bake(&[]);
    assert_eq!(later["digest"].as_str().unwrap(), digest_one);
    assert_eq!(digest_one.len(), 64);
}

#[test]
fn non_utf8_names_are_reported_losslessly() {
    use base64::Engine;
    let f = Fixture::new();
    let kept = f
        .root()
        .join(std::ffi::OsStr::from_bytes(b"etc/latin1-\xe9t\xe9"));
    std::fs::write(&kept, b"image").unwrap();
    f.bake(&[]);
    let added = f
        .root()
        .join(std::ffi::OsStr::from_bytes(b"etc/\xff\xfe-dropper"));
    std::fs::write(&added, b"payload").unwrap();
    std::fs::remove_file(&kept).unwrap();
    let (code, report) = f.verify(&[]);
    assert_eq!(code, 1);
    let exact: Vec<(String, Vec<u8>)> = report["deviations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let b64 = d["path_base64"]
                .as_str()
                .expect("non-UTF-8 path carries path_base64");
            (
                d["kind"].as_str().unwrap().to_string(),
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(
        exact,
        [
            ("added".to_string(), b"etc/\xff\xfe-dropper".to_vec()),
            ("removed".to_string(), b"etc/latin1-\xe9t\xe9".to_vec())
        ]
    );
    // Text output escapes rather than printing raw bytes to a terminal.
    let text = run(&["verify", "--root", &f.r(), "--manifest", &f.m()]);
    assert!(
        String::from_utf8(text.stdout)
            .unwrap()
            .contains("etc/\\xff\\xfe-dropper")
    );
}

/// Runs the agent as an unprivileged user when we are root (root reads
/// everything), so permission failures are real.
fn run_unprivileged(args: &[&str]) -> Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            BIN,
        ]);
        c
    } else {
        Command::new(BIN)
    };
    cmd.args(args).output().unwrap()
}

#[test]
fn unreadable_files_and_directories_are_counted_not_fatal() {
    if !is_root() {
        // As ourselves we can read our own files whatever their mode.
        eprintln!("skipped: needs root to bake what an unprivileged verify cannot read");
        return;
    }
    let f = Fixture::new();
    sh(&format!("chmod 755 {}", f.dir.path().display()));
    sh(&format!(
        "cd {} && mkdir -p secret/deep && echo s > secret/deep/key && echo t > token && chmod 0600 token && chmod 0700 secret",
        f.r()
    ));
    // Root bakes everything; an unprivileged verify cannot read two of them.
    f.bake(&[]);
    let out = run_unprivileged(&[
        "verify",
        "--root",
        &f.r(),
        "--manifest",
        &f.m(),
        "--format",
        "json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "no drift but incomplete coverage exits 3: {report:#}"
    );
    let nv = not_verified(&report);
    assert!(
        nv.iter()
            .any(|(p, r)| p == "token" && r.contains("Permission denied")),
        "{nv:?}"
    );
    assert!(
        nv.iter()
            .any(|(p, r)| p == "secret" && r.contains("cannot list")),
        "{nv:?}"
    );
    // What lies under the unreadable directory is not verified, not removed.
    assert!(deviations(&report).is_empty(), "{report:#}");
    assert_eq!(report["complete"], false);
    let text = run_unprivileged(&["verify", "--root", &f.r(), "--manifest", &f.m()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.starts_with("NO DRIFT") && text.contains("NOT VERIFIED: 2 paths"),
        "{text}"
    );

    // Unreadable at bake time: recorded as such, and never reported as drift.
    let out = run_unprivileged(&[
        "bake",
        "--root",
        &f.r(),
        "--out",
        "/tmp/../dev/null",
        "--format",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "nobody cannot replace /dev/null"
    );
    let unpriv_manifest = f.dir.path().join("unpriv.dwm");
    sh(&format!(
        "touch {0} && chmod 666 {0} && chmod 777 {1}",
        unpriv_manifest.display(),
        f.dir.path().display()
    ));
    let out = run_unprivileged(&[
        "bake",
        "--root",
        &f.r(),
        "--out",
        unpriv_manifest.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let baked: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "incomplete bake exits 3: {baked:#}"
    );
    assert_eq!(baked["unverified_count"], 2, "{baked:#}");
    let (code, report) = run_json(&[
        "verify",
        "--root",
        &f.r(),
        "--manifest",
        unpriv_manifest.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 3, "{report:#}");
    assert!(deviations(&report).is_empty(), "{report:#}");
    assert!(
        not_verified(&report)
            .iter()
            .any(|(p, r)| p == "secret" && r.contains("not recorded at bake time"))
    );
}

#[test]
fn fifos_sockets_and_devices_are_recorded_never_opened() {
    let f = Fixture::new();
    sh(&format!("mkfifo {}/etc/fifo", f.r()));
    let _listener = std::os::unix::net::UnixListener::bind(f.root().join("etc/sock")).unwrap();
    if is_root() {
        sh(&format!(
            "mknod {0}/etc/null c 1 3 && mknod {0}/etc/disk b 7 0",
            f.r()
        ));
    }
    // Opening the FIFO for reading would block forever: a deadline proves
    // the scan never does.
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args([
            "bake",
            "--root",
            &f.r(),
            "--out",
            &f.m(),
            "--format",
            "json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("bake hung: it opened a FIFO or device");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let baked: serde_json::Value =
        serde_json::from_slice(&child.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(baked["unverified_count"], 0, "{baked:#}");
    let (code, report) = f.verify(&[]);
    assert_eq!(code, 0, "{report:#}");
    if is_root() {
        assert_eq!(baked["other"], 4);
        sh(&format!(
            "rm {0}/etc/null && mknod {0}/etc/null c 1 5",
            f.r()
        ));
        let (code, report) = f.verify(&[]);
        assert_eq!(code, 1);
        let d = &report["deviations"][0];
        assert_eq!(
            (d["kind"].as_str(), d["path"].as_str()),
            (Some("modified"), Some("etc/null"))
        );
        assert_eq!(
            (
                d["expected"]["device"].as_str(),
                d["actual"]["device"].as_str()
            ),
            (Some("1:3"), Some("1:5"))
        );
    } else {
        assert_eq!(baked["other"], 2);
    }
}

#[test]
fn a_fifo_is_never_opened() {
    // A writer opening a FIFO blocks until some reader opens it: if bake or
    // verify opened the FIFO at all, even non-blocking, the writer would
    // wake. It must still be waiting after both have run.
    let f = Fixture::new();
    let fifo = f.root().join("etc/fifo");
    sh(&format!("mkfifo {}", fifo.display()));
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let writer_path = fifo.clone();
    std::thread::spawn(move || {
        let writer = std::fs::OpenOptions::new().write(true).open(&writer_path);
        let _ = opened_tx.send(writer.is_ok());
    });
    std::thread::sleep(Duration::from_millis(100));
    f.bake(&[]);
    assert_eq!(f.verify(&[]).0, 0);
    assert_eq!(f.verify(&["--metadata-only"]).0, 0);
    assert!(
        opened_rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the FIFO was opened by the scan"
    );
    // Release the writer: this open is the first reader.
    let _reader = std::fs::File::open(&fifo).unwrap();
    assert_eq!(opened_rx.recv_timeout(Duration::from_secs(5)), Ok(true));
}

#[test]
fn symlink_loops_and_escapes_are_never_followed() {
    let f = Fixture::new();
    sh(&format!(
        "cd {} && ln -s loop loop && ln -s a b && ln -s b a && ln -s ../../../../etc/shadow escape && ln -s / rootlink && mkdir d && ln -s .. d/up",
        f.r()
    ));
    let baked = f.bake(&[]);
    assert_eq!(baked["symlinks"], 6);
    assert_eq!(baked["unverified_count"], 0);
    assert_eq!(f.verify(&[]).0, 0);
    sh(&format!("cd {} && ln -sfn /etc/passwd escape", f.r()));
    let (code, report) = f.verify(&[]);
    assert_eq!(code, 1);
    assert_eq!(
        deviations(&report),
        [("modified".to_string(), "escape".to_string())]
    );
}

#[test]
fn other_file_systems_can_be_left_out_and_say_so() {
    if !is_root() {
        eprintln!("skipped: mounting a file system needs root");
        return;
    }
    let f = Fixture::new();
    let mnt = f.root().join("mnt/data");
    std::fs::create_dir_all(&mnt).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=1m drift-test {}",
        mnt.display()
    ));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    std::fs::write(mnt.join("inside"), b"on tmpfs").unwrap();

    let all = f.bake(&[]);
    assert_eq!(all["unverified_count"], 0);
    assert_eq!(all["files"], 2);
    let one = f.bake_expecting(3, &["--one-file-system"]);
    assert_eq!(one["files"], 1, "{one:#}");
    assert_eq!(one["unverified"][0]["path"], "mnt/data");
    assert!(
        one["unverified"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("another file system")
    );
    // Verifying the same way reports the mount as not verified, not drift.
    let (code, report) = f.verify(&["--one-file-system"]);
    assert_eq!(code, 3, "{report:#}");
    assert!(deviations(&report).is_empty());
}

#[test]
fn large_sparse_files_hash_like_b3sum() {
    let f = Fixture::new();
    let big = f.root().join("var-disk.img");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(1 << 30).unwrap();
    std::os::unix::fs::FileExt::write_at(&file, b"data in the middle", 512 << 20).unwrap();
    drop(file);
    f.bake(&[]);
    let b3sum = Command::new("b3sum")
        .arg("--no-names")
        .arg(&big)
        .output()
        .expect("b3sum is installed by .ci/run");
    let expected = String::from_utf8(b3sum.stdout).unwrap().trim().to_string();
    sh(&format!(
        "truncate -s 1G {0} && printf 'X' | dd of={0} bs=1 seek=1 conv=notrunc status=none",
        big.display()
    ));
    let (code, report) = f.verify(&[]);
    assert_eq!(code, 1);
    let d = &report["deviations"][0];
    assert_eq!(d["path"], "var-disk.img");
    assert_eq!(d["expected"]["blake3"], expected.as_str());
    assert_eq!(d["expected"]["size"], 1u64 << 30);
}

#[test]
fn package_databases_missing_empty_or_malformed() {
    let f = Fixture::new();
    // No database at all: no packages, nothing unverified.
    let baked = f.bake(&[]);
    assert_eq!(
        (
            baked["packages"].as_u64(),
            baked["unverified_count"].as_u64()
        ),
        (Some(0), Some(0))
    );
    std::fs::create_dir_all(f.root().join("var/lib/dpkg")).unwrap();
    let status = f.root().join("var/lib/dpkg/status");
    std::fs::write(&status, b"").unwrap();
    let baked = f.bake(&[]);
    assert_eq!(baked["package_databases"][0]["packages"], 0);
    // A malformed stanza is reported; the good ones are kept.
    std::fs::write(
        &status,
        "Package: good\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n\nStatus: install ok installed\nVersion: 2\n\nPackage: also-good\nStatus: install ok installed\nVersion: 3\nArchitecture: all\n\n",
    )
    .unwrap();
    let baked = f.bake_expecting(3, &[]);
    assert_eq!(baked["packages"], 2, "{baked:#}");
    let problem = &baked["unverified"][0];
    assert_eq!(problem["path"], "var/lib/dpkg/status");
    assert!(
        problem["reason"].as_str().unwrap().contains("Package"),
        "{problem}"
    );
    // The database removed on the host: its packages are unverified, and
    // the file's removal is the drift.
    std::fs::remove_file(&status).unwrap();
    let (code, report) = f.verify(&[]);
    assert_eq!(code, 1);
    assert_eq!(
        deviations(&report),
        [("removed".to_string(), "var/lib/dpkg/status".to_string())]
    );
    assert!(
        not_verified(&report)
            .iter()
            .any(|(p, r)| p == "var/lib/dpkg/status" && r.contains("missing"))
    );
}

#[test]
fn a_real_dpkg_status_file_is_read() {
    let real = Path::new("/var/lib/dpkg/status");
    if !real.exists() {
        eprintln!("skipped: this machine has no dpkg database");
        return;
    }
    let f = Fixture::new();
    std::fs::create_dir_all(f.root().join("var/lib/dpkg")).unwrap();
    std::fs::copy(real, f.root().join("var/lib/dpkg/status")).unwrap();
    let baked = f.bake(&[]);
    let installed = Command::new("dpkg-query")
        .args([
            "--admindir",
            &format!("{}/var/lib/dpkg", f.r()),
            "-W",
            "-f",
            "${db:Status-Status}\\n",
        ])
        .output()
        .unwrap();
    let expected = String::from_utf8(installed.stdout)
        .unwrap()
        .lines()
        .filter(|l| *l == "installed")
        .count();
    assert!(expected > 100);
    assert_eq!(baked["packages"].as_u64().unwrap() as usize, expected);
    assert_eq!(f.verify(&[]).0, 0);
}

#[test]
fn metadata_only_mode_and_its_documented_blind_spot() {
    let f = Fixture::new();
    sh(&format!("cd {} && echo 'one' > a && echo 'two' > b", f.r()));
    f.bake(&[]);
    // Same size, mtime restored: invisible without hashing, caught with it.
    sh(&format!(
        "cd {} && cp -p a ref && echo 'ONE' > a && touch -r ref a && rm ref && echo 'three' > b",
        f.r()
    ));
    let (code, fast) = f.verify(&["--metadata-only"]);
    assert_eq!(code, 1);
    assert_eq!(fast["mode"], "metadata_only");
    assert_eq!(
        deviations(&fast),
        [("modified".to_string(), "b".to_string())]
    );
    let (_, full) = f.verify(&[]);
    assert_eq!(
        deviations(&full),
        [
            ("modified".to_string(), "a".to_string()),
            ("modified".to_string(), "b".to_string())
        ]
    );
}

#[test]
fn runtime_zones_from_a_policy_file_are_shown_apart() {
    let f = Fixture::new();
    let policy = f.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "runtime_zones = [\"srv/data\"]\nexclude = [\"scratch\"]\n",
    )
    .unwrap();
    sh(&format!(
        "mkdir -p {0}/srv/data {0}/scratch && echo 1 > {0}/srv/data/db",
        f.r()
    ));
    f.bake(&["--policy", policy.to_str().unwrap()]);
    sh(&format!(
        "echo 2 > {0}/srv/data/db && echo junk > {0}/scratch/x && echo new > {0}/srv/data/new",
        f.r()
    ));
    let (code, report) = f.verify(&[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["drift_pct"], 0.0);
    let zone: Vec<String> = report["runtime_zone_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(zone, ["srv/data/db", "srv/data/new"]);
    assert!(
        report["excluded"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "scratch")
    );

    let (_, inspected) = run_json(&["inspect", &f.m(), "--format", "json"]);
    assert!(
        inspected["policy"]["runtime_zones"]
            .as_array()
            .unwrap()
            .iter()
            .any(|z| z == "srv/data")
    );
    assert_eq!(inspected["files"], 2);
    assert!(inspected["bytes_per_entry"].as_f64().unwrap() > 0.0);
}

#[test]
fn hard_links_broken_or_made_are_metadata_drift() {
    let f = Fixture::new();
    sh(&format!(
        "cd {} && echo same > a && ln a b && echo other > c",
        f.r()
    ));
    let baked = f.bake(&[]);
    assert_eq!(baked["files"], 4);
    assert_eq!(f.verify(&[]).0, 0);
    // Same content, but b is no longer the same inode as a; c becomes one.
    sh(&format!(
        "cd {} && cp b b.tmp && mv b.tmp b && rm c && ln a c",
        f.r()
    ));
    let (code, report) = f.verify(&[]);
    assert_eq!(code, 1, "{report:#}");
    let found: Vec<(String, String, String)> = report["deviations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_string(),
                d["expected"]["hardlinked_with"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string(),
                d["actual"]["hardlinked_with"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string(),
            )
        })
        .collect();
    assert!(
        found.contains(&("b".into(), "a".into(), "none".into())),
        "{found:?}"
    );
    assert!(
        found.contains(&("c".into(), "none".into(), "a".into())),
        "{found:?}"
    );
    // c's content changed too: that is its own deviation.
    assert!(deviations(&report).contains(&("modified".to_string(), "c".to_string())));
}

#[test]
fn a_closed_output_pipe_keeps_the_verdict() {
    // `verify | head` must still say "drift" (1), not "error" (2).
    let f = Fixture::new();
    f.bake(&[]);
    std::fs::write(f.root().join("etc/motd"), b"changed\n").unwrap();
    let mut child = Command::new(BIN)
        .args(["verify", "--root", &f.r(), "--manifest", &f.m()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything is written
    assert_eq!(child.wait().unwrap().code(), Some(1));
}
