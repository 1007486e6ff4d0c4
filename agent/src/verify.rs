//! Verify: compare a live root and package set with a manifest, both ways.
//!
//! Both sides are sorted by path, so the comparison is one merge pass: a
//! path only in the manifest was removed, a path only on the host was added
//! (the direction `b3sum --check` cannot see), and a path on both is
//! compared field by field. Content is compared by hash whatever the
//! timestamps say, so `touch -r` cannot hide a change.
//!
//! What could not be verified on either side (unreadable at bake time,
//! unreadable or vanished now, a directory that could not be listed) is
//! counted as such and never reported as drift or as clean.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use driftwatch_proto::manifest::codec::Decoded;
use driftwatch_proto::manifest::hex;
use driftwatch_proto::{
    DriftCounts, Entry, EntryKind, Manifest, Package, PackageManager, Unverified,
};

use crate::packages::{self, PackageScan};
use crate::path::display;
use crate::policy::{Policy, PolicyError};
use crate::report::{Attrs, Coverage, Deviation, DeviationKind, PolicySource, Report, Subject};
use crate::scan::{self, ContentMode, Scan, ScanError, ScanOptions};

/// Why a verify could not run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("the policy recorded in the manifest is invalid: {0}")]
    ManifestPolicy(PolicyError),
}

/// Scans `root` and compares it with `manifest`. `policy_override` replaces
/// the manifest's policy (the report says so).
pub fn verify(
    root: &Path,
    manifest: &Decoded,
    policy_override: Option<&Policy>,
    options: &ScanOptions,
) -> Result<Report, VerifyError> {
    let started = Instant::now();
    let baked_policy;
    let (policy, policy_source) = match policy_override {
        Some(policy) => (policy, PolicySource::File),
        None => {
            baked_policy = Policy::from_spec(manifest.manifest.policy.clone())
                .map_err(VerifyError::ManifestPolicy)?;
            (&baked_policy, PolicySource::Manifest)
        }
    };
    let live = scan::scan(root, policy, options)?;
    let live_packages = packages::read_installed(root);
    let mut report = compare(
        &manifest.manifest,
        &live,
        &live_packages,
        policy,
        options.content,
    );
    report.manifest_digest = manifest.digest;
    report.policy_source = policy_source;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The comparison itself, on already-gathered data.
pub fn compare(
    manifest: &Manifest,
    live: &Scan,
    live_packages: &PackageScan,
    policy: &Policy,
    content_mode: ContentMode,
) -> Report {
    let mut cmp = Comparison {
        policy,
        content_mode,
        baked_unverified: Covered::new(&manifest.unverified),
        live_unverified: Covered::new(&live.unverified),
        manifest_leaders: hardlink_leaders(&manifest.entries),
        live_leaders: hardlink_leaders(&live.entries),
        recheck_exclusions: policy.spec() != &manifest.policy,
        drift: DriftCounts::default(),
        deviations: Vec::new(),
        runtime_zone_changes: Vec::new(),
        not_verified: Vec::new(),
        entries_checked: 0,
        packages_checked: 0,
    };
    cmp.compare_entries(&manifest.entries, &live.entries);
    cmp.compare_packages(manifest, live_packages);

    let mut not_verified = cmp.not_verified;
    not_verified.extend(live.unverified.iter().cloned());
    not_verified.extend(live_packages.problems.iter().cloned());
    // What bake could not record is unverified now too.
    not_verified.extend(manifest.unverified.iter().map(|u| Unverified {
        path: u.path.clone(),
        reason: format!("not recorded at bake time: {}", u.reason),
    }));
    not_verified.sort();
    not_verified.dedup_by(|a, b| a.path == b.path);

    let mut deviations = cmp.deviations;
    deviations
        .sort_by(|a, b| (a.kind, subject_key(&a.subject)).cmp(&(b.kind, subject_key(&b.subject))));
    Report {
        manifest_digest: driftwatch_proto::Digest([0; 32]),
        image: manifest.provenance.clone(),
        content_mode,
        policy_source: PolicySource::Manifest,
        drift: cmp.drift,
        deviations,
        runtime_zone_changes: cmp.runtime_zone_changes,
        coverage: Coverage {
            entries_checked: cmp.entries_checked,
            packages_checked: cmp.packages_checked,
            files_hashed: live.files_hashed,
            bytes_hashed: live.bytes_hashed,
            not_verified,
            excluded: policy.spec().exclude.clone(),
        },
        elapsed_secs: 0.0,
    }
}

fn subject_key(subject: &Subject) -> (&[u8], &str) {
    match subject {
        Subject::Path(p) => (p, ""),
        Subject::Package {
            name, architecture, ..
        } => (name.as_bytes(), architecture),
    }
}

/// A sorted list of unverified paths, each standing for its subtree.
struct Covered<'a> {
    paths: Vec<&'a [u8]>,
}

impl<'a> Covered<'a> {
    fn new(list: &'a [Unverified]) -> Covered<'a> {
        let mut paths: Vec<&[u8]> = list.iter().map(|u| &u.path[..]).collect();
        paths.sort_unstable();
        Covered { paths }
    }

    /// Whether `path` or one of its ancestors is in the list.
    fn contains(&self, path: &[u8]) -> bool {
        if self.paths.is_empty() {
            return false;
        }
        let mut end = path.len();
        loop {
            if self.paths.binary_search(&&path[..end]).is_ok() {
                return true;
            }
            match path[..end].iter().rposition(|&b| b == b'/') {
                Some(slash) => end = slash,
                None => return end != 0 && self.paths.binary_search(&&b""[..]).is_ok(),
            }
        }
    }
}

/// For each hard-link group, its first path: what `hardlinked_with` shows.
fn hardlink_leaders(entries: &[Entry]) -> HashMap<u32, &[u8]> {
    let mut leaders = HashMap::new();
    for entry in entries.iter().filter(|e| e.hardlink_group != 0) {
        leaders
            .entry(entry.hardlink_group)
            .or_insert(&entry.path[..]);
    }
    leaders
}

struct Comparison<'a> {
    policy: &'a Policy,
    content_mode: ContentMode,
    baked_unverified: Covered<'a>,
    live_unverified: Covered<'a>,
    manifest_leaders: HashMap<u32, &'a [u8]>,
    live_leaders: HashMap<u32, &'a [u8]>,
    /// Only a policy other than the baked one can exclude manifest entries.
    recheck_exclusions: bool,
    drift: DriftCounts,
    deviations: Vec<Deviation>,
    runtime_zone_changes: Vec<Deviation>,
    not_verified: Vec<Unverified>,
    entries_checked: u64,
    packages_checked: u64,
}

impl<'a> Comparison<'a> {
    fn compare_entries(&mut self, expected: &'a [Entry], actual: &'a [Entry]) {
        let (mut i, mut j) = (0, 0);
        while i < expected.len() || j < actual.len() {
            let order = match (expected.get(i), actual.get(j)) {
                (Some(e), Some(a)) => e.path.cmp(&a.path),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, _) => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    self.only_in_manifest(&expected[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.only_on_host(&actual[j]);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    self.on_both(&expected[i], &actual[j]);
                    i += 1;
                    j += 1;
                }
            }
        }
    }

    fn only_in_manifest(&mut self, e: &Entry) {
        if self.recheck_exclusions && self.policy.is_excluded(&e.path) {
            return;
        }
        self.drift.observed += 1;
        if self.live_unverified.contains(&e.path) {
            // Not seen now because it could not be read, not because it left.
            return;
        }
        self.entries_checked += 1;
        self.record(
            vec![Deviation {
                kind: DeviationKind::Removed,
                subject: Subject::Path(e.path.clone()),
                expected: Some(self.full_attrs(e, &self.manifest_leaders)),
                actual: None,
            }],
            &e.path,
        );
    }

    fn only_on_host(&mut self, a: &Entry) {
        self.drift.observed += 1;
        if self.baked_unverified.contains(&a.path) {
            // The image's side of this path was never recorded.
            return;
        }
        self.entries_checked += 1;
        self.record(
            vec![Deviation {
                kind: DeviationKind::Added,
                subject: Subject::Path(a.path.clone()),
                expected: None,
                actual: Some(self.full_attrs(a, &self.live_leaders)),
            }],
            &a.path,
        );
    }

    fn on_both(&mut self, e: &Entry, a: &Entry) {
        self.drift.observed += 1;
        self.entries_checked += 1;
        let mut found = Vec::new();
        let (mut exp, mut act) = (Attrs::default(), Attrs::default());
        if e.kind != a.kind {
            exp.kind = Some(e.kind);
            act.kind = Some(a.kind);
        }
        diff(&mut exp.mode, &mut act.mode, e.mode, a.mode);
        diff(&mut exp.uid, &mut act.uid, e.uid, a.uid);
        diff(&mut exp.gid, &mut act.gid, e.gid, a.gid);
        diff(
            &mut exp.capability,
            &mut act.capability,
            capability(e),
            capability(a),
        );
        diff(
            &mut exp.hardlinked_with,
            &mut act.hardlinked_with,
            leader(e, &self.manifest_leaders),
            leader(a, &self.live_leaders),
        );
        if exp != Attrs::default() {
            found.push(Deviation {
                kind: DeviationKind::Metadata,
                subject: Subject::Path(e.path.clone()),
                expected: Some(exp),
                actual: Some(act),
            });
        }
        if e.kind == a.kind
            && let Some((exp, act)) = self.content_change(e, a)
        {
            found.push(Deviation {
                kind: DeviationKind::Modified,
                subject: Subject::Path(e.path.clone()),
                expected: Some(exp),
                actual: Some(act),
            });
        }
        self.record(found, &e.path);
    }

    /// The content side of a path present on both sides with one type.
    fn content_change(&mut self, e: &Entry, a: &Entry) -> Option<(Attrs, Attrs)> {
        let (mut exp, mut act) = (Attrs::default(), Attrs::default());
        match e.kind {
            EntryKind::File => match self.content_mode {
                ContentMode::Hash => match (e.blake3, a.blake3) {
                    (Some(eh), Some(ah)) => {
                        if eh != ah {
                            exp.blake3 = Some(eh);
                            act.blake3 = Some(ah);
                            exp.size = Some(e.size);
                            act.size = Some(a.size);
                        }
                    }
                    // Unreadable on one side: already listed as unverified.
                    _ => {
                        self.entries_checked -= 1;
                        return None;
                    }
                },
                ContentMode::MetadataOnly => {
                    diff(&mut exp.size, &mut act.size, e.size, a.size);
                    diff(&mut exp.mtime, &mut act.mtime, mtime(e), mtime(a));
                }
            },
            EntryKind::Symlink => {
                if e.symlink_target != a.symlink_target {
                    exp.symlink_target = e.symlink_target.as_deref().map(display);
                    act.symlink_target = a.symlink_target.as_deref().map(display);
                }
            }
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                if e.device != a.device {
                    exp.device = device(e);
                    act.device = device(a);
                }
            }
            EntryKind::Dir | EntryKind::Fifo | EntryKind::Socket => {}
        }
        (exp != Attrs::default()).then_some((exp, act))
    }

    /// Files deviations under drift or under runtime zones, and counts the
    /// path once towards `deviating`.
    fn record(&mut self, found: Vec<Deviation>, path: &[u8]) {
        if found.is_empty() {
            return;
        }
        if self.policy.in_runtime_zone(path) {
            self.drift.observed -= 1;
            self.runtime_zone_changes.extend(found);
        } else {
            self.drift.deviating += 1;
            self.deviations.extend(found);
        }
    }

    /// Everything recorded about an entry, for additions and removals.
    fn full_attrs(&self, entry: &Entry, leaders: &HashMap<u32, &[u8]>) -> Attrs {
        Attrs {
            kind: Some(entry.kind),
            mode: Some(entry.mode),
            uid: Some(entry.uid),
            gid: Some(entry.gid),
            size: (entry.kind == EntryKind::File).then_some(entry.size),
            blake3: entry.blake3,
            symlink_target: entry.symlink_target.as_deref().map(display),
            device: device(entry),
            capability: entry.capability.is_some().then(|| capability(entry)),
            hardlinked_with: (entry.hardlink_group != 0).then(|| leader(entry, leaders)),
            ..Attrs::default()
        }
    }

    fn compare_packages(&mut self, manifest: &Manifest, live: &PackageScan) {
        let live_managers: Vec<PackageManager> = live.databases.iter().map(|d| d.manager).collect();
        // A database the image had but the host lacks cannot tell us what is
        // installed: its packages are unverified, not all removed. (The
        // database file itself shows up as a removed path.)
        let mut missing: Vec<PackageManager> = Vec::new();
        for db in &manifest.package_databases {
            if !live_managers.contains(&db.manager) && !missing.contains(&db.manager) {
                missing.push(db.manager);
                self.not_verified.push(Unverified {
                    path: db.path.as_bytes().into(),
                    reason: format!(
                        "{} database missing on the host; its packages were not verified",
                        db.manager
                    ),
                });
            }
        }
        let mut expected: Vec<&Package> = manifest.packages.iter().collect();
        let mut actual: Vec<&Package> = live.packages.iter().collect();
        expected.sort_by(|a, b| a.key().cmp(&b.key()));
        actual.sort_by(|a, b| a.key().cmp(&b.key()));
        let (mut i, mut j) = (0, 0);
        while i < expected.len() || j < actual.len() {
            let order = match (expected.get(i), actual.get(j)) {
                (Some(e), Some(a)) => e.key().cmp(&a.key()),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, _) => std::cmp::Ordering::Greater,
            };
            self.drift.observed += 1;
            let deviation = match order {
                std::cmp::Ordering::Less => {
                    let e = expected[i];
                    i += 1;
                    if missing.contains(&e.manager) {
                        continue;
                    }
                    package_deviation(DeviationKind::PackageRemoved, e, Some(e), None)
                }
                std::cmp::Ordering::Greater => {
                    let a = actual[j];
                    j += 1;
                    package_deviation(DeviationKind::PackageAdded, a, None, Some(a))
                }
                std::cmp::Ordering::Equal => {
                    let (e, a) = (expected[i], actual[j]);
                    i += 1;
                    j += 1;
                    self.packages_checked += 1;
                    if e.version == a.version {
                        continue;
                    }
                    package_deviation(DeviationKind::PackageChanged, e, Some(e), Some(a))
                }
            };
            if deviation.kind != DeviationKind::PackageChanged {
                self.packages_checked += 1;
            }
            self.drift.deviating += 1;
            self.deviations.push(deviation);
        }
    }
}

fn package_deviation(
    kind: DeviationKind,
    package: &Package,
    expected: Option<&Package>,
    actual: Option<&Package>,
) -> Deviation {
    let version = |p: &Package| Attrs {
        version: Some(p.version.clone()),
        ..Attrs::default()
    };
    Deviation {
        kind,
        subject: Subject::Package {
            manager: package.manager,
            name: package.name.clone(),
            architecture: package.architecture.clone(),
        },
        expected: expected.map(version),
        actual: actual.map(version),
    }
}

/// Sets both sides when the values differ.
fn diff<T: PartialEq>(exp: &mut Option<T>, act: &mut Option<T>, e: T, a: T) {
    if e != a {
        *exp = Some(e);
        *act = Some(a);
    }
}

fn capability(entry: &Entry) -> String {
    entry
        .capability
        .as_deref()
        .map_or_else(|| "none".to_string(), hex)
}

fn leader(entry: &Entry, leaders: &HashMap<u32, &[u8]>) -> String {
    match leaders.get(&entry.hardlink_group) {
        Some(first) if entry.hardlink_group != 0 => display(first),
        _ => "none".to_string(),
    }
}

fn device(entry: &Entry) -> Option<String> {
    entry
        .device
        .map(|(major, minor)| format!("{major}:{minor}"))
}

fn mtime(entry: &Entry) -> String {
    format!("{}.{:09}", entry.mtime_sec, entry.mtime_nsec)
}
