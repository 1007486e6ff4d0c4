//! Files vanishing, appearing and changing while the scan runs: the scan
//! must finish, hash every stable file correctly, and either record or
//! report every churned path.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use driftwatch_agent::policy::Policy;
use driftwatch_agent::scan::{ContentMode, ScanOptions, scan};

fn stable_tree(root: &Path) -> HashMap<Vec<u8>, [u8; 32]> {
    let mut expected = HashMap::new();
    for i in 0..600 {
        let rel = format!("stable/d{}/f{i}", i % 13);
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let data = vec![(i % 251) as u8; 1000 + i * 37];
        std::fs::write(&path, &data).unwrap();
        expected.insert(rel.into_bytes(), *blake3::hash(&data).as_bytes());
    }
    expected
}

/// Opens a churn file for writing without ever following a symlink: the
/// churn swaps paths for symlinks, and this test runs as root, so a write
/// through one would land wherever it points.
fn open_no_follow(path: &Path, truncate: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .append(!truncate)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Deletes, recreates, rewrites and swaps paths under `churn/` until told
/// to stop. Nothing is ever written outside `churn/`.
fn churn(root: &Path, stop: &AtomicBool) {
    use std::io::Write;
    let dir = root.join("churn");
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        for i in 0..40 {
            let p = dir.join(format!("c{i}"));
            match (round + i) % 4 {
                0 => {
                    let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
                }
                1 => {
                    if let Ok(mut f) = open_no_follow(&p, true) {
                        let _ = f.write_all(&vec![round as u8; 200_000]);
                    }
                }
                2 => {
                    // Swap a file for a directory or a symlink and back.
                    let _ = std::fs::remove_file(&p);
                    let _ = if i % 2 == 0 {
                        std::fs::create_dir(&p)
                    } else {
                        std::os::unix::fs::symlink("dangling-inside-churn", &p)
                    };
                }
                _ => {
                    if let Ok(mut f) = open_no_follow(&p, false) {
                        let _ = f.write_all(&[1; 4096]);
                    }
                }
            }
        }
    }
}

#[test]
fn scan_survives_a_tree_changing_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let expected = stable_tree(root);
    std::fs::create_dir_all(root.join("churn")).unwrap();
    let stop = AtomicBool::new(false);
    let policy = Policy::builtin();
    let options = ScanOptions {
        threads: 4,
        content: ContentMode::Hash,
        ..ScanOptions::default()
    };

    std::thread::scope(|s| {
        s.spawn(|| churn(root, &stop));
        let started = Instant::now();
        let mut scans = 0;
        let mut churn_unverified = 0;
        while started.elapsed() < Duration::from_secs(3) || scans < 3 {
            let result =
                scan(root, &policy, &options).expect("scan completes while the tree changes");
            scans += 1;
            // Sorted, unique paths: the merge in verify depends on it.
            assert!(result.entries.windows(2).all(|w| w[0].path < w[1].path));
            for (path, hash) in &expected {
                let entry = result
                    .entries
                    .iter()
                    .find(|e| e.path[..] == path[..])
                    .unwrap_or_else(|| {
                        panic!("stable file {} missing", String::from_utf8_lossy(path))
                    });
                assert_eq!(
                    entry.blake3.as_ref(),
                    Some(hash),
                    "stable file hashed wrong"
                );
            }
            // Whatever churned is recorded with a type, or reported.
            for entry in result
                .entries
                .iter()
                .filter(|e| e.path.starts_with(b"churn/"))
            {
                assert!(
                    entry.kind != driftwatch_proto::EntryKind::File
                        || entry.blake3.is_some()
                        || result.unverified.iter().any(|u| u.path == entry.path),
                    "a churned file without a hash must be reported as unverified"
                );
            }
            churn_unverified += result
                .unverified
                .iter()
                .filter(|u| u.path.starts_with(b"churn"))
                .count();
            for u in &result.unverified {
                assert!(
                    u.path.starts_with(b"churn/"),
                    "unexpected unverified {:?}: {}",
                    u.path,
                    u.reason
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        let leaked = root.join("churn/dangling-inside-churn");
        assert!(
            !leaked.exists(),
            "a write followed a symlink: {:?}",
            std::fs::symlink_metadata(&leaked).map(|m| (m.file_type(), m.len()))
        );
        eprintln!(
            "{scans} scans under churn; {churn_unverified} churned paths reported as not verified"
        );
    });
}
