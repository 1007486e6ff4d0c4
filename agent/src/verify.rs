//! Verify: compare a live root and package set with a manifest, both ways.
//!
//! The comparison happens inside the walk: each scan worker has a
//! [`Compare`] visitor that looks every live entry up in the (sorted)
//! manifest and keeps only what deviates, plus the index of each manifest
//! entry it saw. So memory grows with the manifest and the drift, never
//! with a second copy of the tree. After the walk, manifest entries nobody
//! saw are the removals; a live entry the manifest lacks is an addition
//! (the direction `b3sum --check` cannot see). Content is compared by hash
//! whatever the timestamps say, so `touch -r` cannot hide a change.
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
use crate::scan::{self, ContentMode, LinkId, ScanError, ScanOptions, Visitor};

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
    let image = &manifest.manifest;
    let baked_unverified = Covered::new(&image.unverified);
    let context = Context {
        entries: &image.entries,
        content_mode: options.content,
        baked_unverified: &baked_unverified,
    };
    let (visitors, totals) = scan::scan_with(root, policy, options, || Compare::new(&context))?;
    let live_packages = packages::read_installed(root);

    let mut outcome = Outcome::default();
    let mut seen = vec![false; image.entries.len()];
    let mut live_links = Vec::new();
    let mut live_unverified = Vec::new();
    for v in visitors {
        for i in v.seen {
            seen[i] = true;
        }
        outcome.deviations.extend(v.deviations);
        outcome.observed_entries += v.observed;
        outcome.checked_entries += v.checked;
        live_links.extend(v.links);
        live_unverified.extend(v.unverified);
    }
    live_unverified.sort();
    let live_covered = Covered::new(&live_unverified);
    // Only a policy other than the baked one can exclude manifest entries.
    let recheck_exclusions = policy.spec() != &image.policy;
    let mut excluded_by_override = 0u64;
    for (entry, _) in image.entries.iter().zip(&seen).filter(|(_, seen)| !**seen) {
        if recheck_exclusions && policy.is_excluded(&entry.path) {
            // The image has it; only this run's policy hid it. Say so.
            excluded_by_override += 1;
            continue;
        }
        outcome.observed_entries += 1;
        if live_covered.contains(&entry.path) {
            // Not seen because it could not be read, not because it left.
            continue;
        }
        outcome.checked_entries += 1;
        outcome.deviations.push(Deviation {
            kind: DeviationKind::Removed,
            subject: Subject::Path(entry.path.clone()),
            expected: Some(full_attrs(entry)),
            actual: None,
        });
    }
    if excluded_by_override > 0 {
        outcome.not_verified.push(Unverified {
            path: Box::default(),
            reason: format!(
                "{excluded_by_override} entries of the image were excluded by the --policy override, not by the baked policy"
            ),
        });
    }
    compare_hardlinks(image, &seen, live_links, &mut outcome.deviations);
    compare_packages(image, &live_packages, &mut outcome);

    let mut not_verified = outcome.not_verified;
    not_verified.extend(live_unverified);
    not_verified.extend(live_packages.problems.iter().cloned());
    // What bake could not record is unverified now too.
    not_verified.extend(image.unverified.iter().map(|u| Unverified {
        path: u.path.clone(),
        reason: format!("not recorded at bake time: {}", u.reason),
    }));
    not_verified.sort();
    not_verified.dedup_by(|a, b| a.path == b.path);

    // Runtime zones are observed but never drift: their changes are shown
    // apart.
    let (mut runtime_zone_changes, mut deviations): (Vec<Deviation>, Vec<Deviation>) = outcome
        .deviations
        .into_iter()
        .partition(|d| matches!(&d.subject, Subject::Path(p) if policy.in_runtime_zone(p)));
    // Workers find things in no fixed order; reports must not depend on it.
    let by_kind_then_subject = |a: &Deviation, b: &Deviation| {
        (a.kind, subject_key(&a.subject)).cmp(&(b.kind, subject_key(&b.subject)))
    };
    deviations.sort_by(by_kind_then_subject);
    runtime_zone_changes.sort_by(|a, b| {
        subject_key(&a.subject)
            .cmp(&subject_key(&b.subject))
            .then(a.kind.cmp(&b.kind))
    });
    let mut deviating: Vec<_> = deviations.iter().map(|d| subject_key(&d.subject)).collect();
    deviating.sort_unstable();
    deviating.dedup();
    let drift = DriftCounts {
        deviating: deviating.len() as u64,
        observed: outcome.observed_entries + outcome.observed_packages,
    };

    Ok(Report {
        manifest_digest: manifest.digest,
        image: image.provenance.clone(),
        content_mode: options.content,
        policy_source,
        drift,
        deviations,
        runtime_zone_changes,
        coverage: Coverage {
            entries_checked: outcome.checked_entries,
            packages_checked: outcome.checked_packages,
            files_hashed: totals.files_hashed,
            bytes_hashed: totals.bytes_hashed,
            not_verified,
            excluded: policy.spec().exclude.clone(),
        },
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

/// What every worker's visitor shares, read-only.
struct Context<'a> {
    /// The manifest's entries, sorted by path.
    entries: &'a [Entry],
    content_mode: ContentMode,
    baked_unverified: &'a Covered<'a>,
}

/// One worker's comparison of the live entries it finds.
struct Compare<'a> {
    ctx: &'a Context<'a>,
    /// Indices of manifest entries found on the host.
    seen: Vec<usize>,
    deviations: Vec<Deviation>,
    /// Live entries with other links, for the hard-link comparison.
    links: Vec<(Box<[u8]>, LinkId)>,
    unverified: Vec<Unverified>,
    observed: u64,
    checked: u64,
}

impl<'a> Compare<'a> {
    fn new(ctx: &'a Context<'a>) -> Compare<'a> {
        Compare {
            ctx,
            seen: Vec::new(),
            deviations: Vec::new(),
            links: Vec::new(),
            unverified: Vec::new(),
            observed: 0,
            checked: 0,
        }
    }
}

impl Visitor for Compare<'_> {
    fn entry(&mut self, actual: Entry, link: Option<LinkId>, complete: bool) {
        if let Some(link) = link {
            self.links.push((actual.path.clone(), link));
        }
        let found = self
            .ctx
            .entries
            .binary_search_by(|e| e.path.cmp(&actual.path));
        match found {
            Ok(index) => {
                self.seen.push(index);
                self.observed += 1;
                let expected = &self.ctx.entries[index];
                let known = Known {
                    expected: !self.ctx.baked_unverified.contains_exactly(&expected.path),
                    actual: complete,
                };
                let (deviations, comparable) =
                    compare_entry(expected, &actual, self.ctx.content_mode, known);
                self.checked += u64::from(comparable);
                self.deviations.extend(deviations);
            }
            Err(_) => {
                self.observed += 1;
                if self.ctx.baked_unverified.contains(&actual.path) {
                    // The image's side of this path was never recorded.
                    return;
                }
                self.checked += 1;
                self.deviations.push(Deviation {
                    kind: DeviationKind::Added,
                    subject: Subject::Path(actual.path.clone()),
                    expected: None,
                    actual: Some(full_attrs(&actual)),
                });
            }
        }
    }

    fn unverified(&mut self, path: Vec<u8>, reason: String) {
        self.unverified.push(Unverified {
            path: path.into(),
            reason,
        });
    }
}

/// Whether each side of a path was read in full. A side read only in part
/// (and reported as unverified) leaves fields empty that mean "unknown".
#[derive(Debug, Clone, Copy)]
struct Known {
    expected: bool,
    actual: bool,
}

impl Known {
    fn both(self) -> bool {
        self.expected && self.actual
    }
}

/// Compares one path present on both sides. Returns its deviations and
/// whether it could be fully compared. What could not be read is not
/// compared, except that a file whose content could not be hashed is still
/// compared on size: a different size proves a change, and a change that
/// can be proved is drift even when the content cannot be read.
fn compare_entry(
    e: &Entry,
    a: &Entry,
    content_mode: ContentMode,
    known: Known,
) -> (Vec<Deviation>, bool) {
    let mut found = Vec::new();
    let (mut exp, mut act) = (Attrs::default(), Attrs::default());
    if e.kind != a.kind {
        exp.kind = Some(e.kind);
        act.kind = Some(a.kind);
    }
    diff(&mut exp.mode, &mut act.mode, e.mode, a.mode);
    diff(&mut exp.uid, &mut act.uid, e.uid, a.uid);
    diff(&mut exp.gid, &mut act.gid, e.gid, a.gid);
    if known.both() {
        diff(
            &mut exp.capability,
            &mut act.capability,
            capability(e),
            capability(a),
        );
    }
    if exp != Attrs::default() {
        found.push(Deviation {
            kind: DeviationKind::Metadata,
            subject: Subject::Path(e.path.clone()),
            expected: Some(exp),
            actual: Some(act),
        });
    }
    let (mut exp, mut act) = (Attrs::default(), Attrs::default());
    let mut comparable = known.both();
    if e.kind == a.kind {
        match e.kind {
            EntryKind::File => match (content_mode, e.blake3, a.blake3) {
                (ContentMode::Hash, Some(eh), Some(ah)) => {
                    if eh != ah {
                        exp.blake3 = Some(eh);
                        act.blake3 = Some(ah);
                        exp.size = Some(e.size);
                        act.size = Some(a.size);
                    }
                }
                (ContentMode::Hash, _, _) => {
                    comparable = false;
                    diff(&mut exp.size, &mut act.size, e.size, a.size);
                }
                (ContentMode::MetadataOnly, _, _) => {
                    diff(&mut exp.size, &mut act.size, e.size, a.size);
                    diff(&mut exp.mtime, &mut act.mtime, mtime(e), mtime(a));
                }
            },
            EntryKind::Symlink if known.both() => {
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
            EntryKind::Symlink | EntryKind::Dir | EntryKind::Fifo | EntryKind::Socket => {}
        }
    }
    if exp != Attrs::default() {
        found.push(Deviation {
            kind: DeviationKind::Modified,
            subject: Subject::Path(e.path.clone()),
            expected: Some(exp),
            actual: Some(act),
        });
    }
    (found, comparable)
}

/// Compares which paths share an inode, on each side. Runs after the walk
/// because a link's peers may be found by other workers.
///
/// A path's link peer is named by the group's first member, counting only
/// members present on both sides: so adding or removing one member reports
/// that member (added or removed, with its links), not a relabelling of every
/// other member of the group. A difference joins the path's metadata
/// deviation, or becomes one.
fn compare_hardlinks(
    image: &Manifest,
    seen: &[bool],
    live_links: Vec<(Box<[u8]>, LinkId)>,
    deviations: &mut Vec<Deviation>,
) {
    let in_image = |path: &[u8]| {
        image
            .entries
            .binary_search_by(|e| e.path[..].cmp(path))
            .ok()
    };
    // Live groups: inodes seen under more than one name.
    let mut live_leader: HashMap<Box<[u8]>, String> = HashMap::new(); // over shared paths
    let mut live_any_leader: HashMap<Box<[u8]>, String> = HashMap::new(); // over all
    for members in scan::link_groups(live_links) {
        let any = display(&members[0]);
        let shared: Vec<&Box<[u8]>> = members.iter().filter(|p| in_image(p).is_some()).collect();
        let shared_leader = (shared.len() > 1).then(|| display(shared[0]));
        for path in &members {
            live_any_leader.insert(path.clone(), any.clone());
            if let Some(leader) = &shared_leader
                && in_image(path).is_some()
            {
                live_leader.insert(path.clone(), leader.clone());
            }
        }
    }
    // Image groups, over all members and over members seen live.
    let mut image_any: HashMap<u32, &[u8]> = HashMap::new();
    let mut image_shared: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, e) in image
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.hardlink_group != 0)
    {
        image_any.entry(e.hardlink_group).or_insert(&e.path);
        if seen[i] {
            image_shared.entry(e.hardlink_group).or_default().push(i);
        }
    }
    let none = || "none".to_string();

    // Additions and removals show their links in full.
    for d in deviations.iter_mut() {
        let Subject::Path(p) = &d.subject else {
            continue;
        };
        match (d.kind, d.actual.as_mut(), d.expected.as_mut()) {
            (DeviationKind::Added, Some(actual), _) => {
                actual.hardlinked_with = live_any_leader.get(p).cloned();
            }
            (DeviationKind::Removed, _, Some(expected)) => {
                if let Some(i) = in_image(p)
                    && let Some(leader) = image_any.get(&image.entries[i].hardlink_group)
                {
                    expected.hardlinked_with = Some(display(leader));
                }
            }
            _ => {}
        }
    }

    let mut expected_leader: HashMap<usize, String> = HashMap::new();
    for members in image_shared.values().filter(|m| m.len() > 1) {
        let leader = display(&image.entries[members[0]].path);
        for &i in members {
            expected_leader.insert(i, leader.clone());
        }
    }
    let mut candidates: Vec<usize> = expected_leader.keys().copied().collect();
    candidates.extend(live_leader.keys().filter_map(|p| in_image(p)));
    candidates.sort_unstable();
    candidates.dedup();

    let mut metadata_at: HashMap<Box<[u8]>, usize> = deviations
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match (&d.subject, d.kind) {
            (Subject::Path(p), DeviationKind::Metadata) => Some((p.clone(), i)),
            _ => None,
        })
        .collect();
    for i in candidates {
        let entry = &image.entries[i];
        let expected = expected_leader.get(&i).cloned().unwrap_or_else(none);
        let actual = live_leader.get(&entry.path).cloned().unwrap_or_else(none);
        if expected == actual {
            continue;
        }
        match metadata_at.get(&entry.path) {
            Some(&at) => {
                let d = &mut deviations[at];
                d.expected
                    .get_or_insert_with(Attrs::default)
                    .hardlinked_with = Some(expected);
                d.actual.get_or_insert_with(Attrs::default).hardlinked_with = Some(actual);
            }
            None => {
                metadata_at.insert(entry.path.clone(), deviations.len());
                deviations.push(Deviation {
                    kind: DeviationKind::Metadata,
                    subject: Subject::Path(entry.path.clone()),
                    expected: Some(Attrs {
                        hardlinked_with: Some(expected),
                        ..Attrs::default()
                    }),
                    actual: Some(Attrs {
                        hardlinked_with: Some(actual),
                        ..Attrs::default()
                    }),
                });
            }
        }
    }
}

/// What the comparison adds up to, before it becomes a report.
#[derive(Default)]
struct Outcome {
    deviations: Vec<Deviation>,
    not_verified: Vec<Unverified>,
    observed_entries: u64,
    observed_packages: u64,
    checked_entries: u64,
    checked_packages: u64,
}

fn compare_packages(manifest: &Manifest, live: &PackageScan, outcome: &mut Outcome) {
    let live_managers: Vec<PackageManager> = live.databases.iter().map(|d| d.manager).collect();
    // A database the image had but the host lacks cannot tell us what is
    // installed: its packages are unverified, not all removed. (The
    // database file itself shows up as a removed path.)
    let mut missing: Vec<PackageManager> = Vec::new();
    for db in &manifest.package_databases {
        if !live_managers.contains(&db.manager) && !missing.contains(&db.manager) {
            missing.push(db.manager);
            outcome.not_verified.push(Unverified {
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
        outcome.observed_packages += 1;
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
                if e.version == a.version {
                    outcome.checked_packages += 1;
                    continue;
                }
                package_deviation(DeviationKind::PackageChanged, e, Some(e), Some(a))
            }
        };
        outcome.checked_packages += 1;
        outcome.deviations.push(deviation);
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

/// Orders and identifies subjects: paths first, then packages by manager,
/// name and architecture.
fn subject_key(subject: &Subject) -> (u8, &[u8], &str, &str) {
    match subject {
        Subject::Path(p) => (0, p, "", ""),
        Subject::Package {
            manager,
            name,
            architecture,
        } => (1, name.as_bytes(), architecture, manager.as_str()),
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

    /// Whether `path` itself is in the list.
    fn contains_exactly(&self, path: &[u8]) -> bool {
        self.paths.binary_search(&path).is_ok()
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

/// Everything recorded about an entry, for additions and removals.
fn full_attrs(entry: &Entry) -> Attrs {
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
        ..Attrs::default()
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

fn device(entry: &Entry) -> Option<String> {
    entry
        .device
        .map(|(major, minor)| format!("{major}:{minor}"))
}

fn mtime(entry: &Entry) -> String {
    format!("{}.{:09}", entry.mtime_sec, entry.mtime_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covered_stands_for_subtrees() {
        let list = vec![Unverified {
            path: (*b"secret").into(),
            reason: String::new(),
        }];
        let covered = Covered::new(&list);
        assert!(covered.contains(b"secret"));
        assert!(covered.contains(b"secret/deep/key"));
        assert!(!covered.contains(b"secrets"));
        assert!(!covered.contains(b""));
    }

    const BOTH_KNOWN: Known = Known {
        expected: true,
        actual: true,
    };

    #[test]
    fn what_could_not_be_read_is_unknown_not_none() {
        let mut e = Entry::new(*b"usr/bin/ping", EntryKind::File);
        e.capability = Some((*b"\x01\x00\x00\x02").into());
        e.blake3 = Some([1; 32]);
        e.size = 100;
        // Unreadable now: no hash, no capability read, same size.
        let mut a = e.clone();
        a.capability = None;
        a.blake3 = None;
        let unreadable_now = Known {
            expected: true,
            actual: false,
        };
        let (found, comparable) = compare_entry(&e, &a, ContentMode::Hash, unreadable_now);
        assert!(found.is_empty(), "{found:?}");
        assert!(!comparable);
        // A different size proves a change even without a hash.
        a.size = 200;
        let (found, _) = compare_entry(&e, &a, ContentMode::Hash, unreadable_now);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, DeviationKind::Modified);
        assert_eq!(found[0].actual.as_ref().unwrap().size, Some(200));
    }

    #[test]
    fn one_path_can_differ_in_content_and_metadata() {
        let mut e = Entry::new(*b"usr/bin/tool", EntryKind::File);
        e.mode = 0o755;
        e.blake3 = Some([1; 32]);
        let mut a = e.clone();
        a.mode = 0o4755;
        a.blake3 = Some([2; 32]);
        let (found, comparable) = compare_entry(&e, &a, ContentMode::Hash, BOTH_KNOWN);
        assert!(comparable);
        let kinds: Vec<DeviationKind> = found.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, [DeviationKind::Metadata, DeviationKind::Modified]);
        // mtime alone is never drift when content is hashed.
        let mut touched = e.clone();
        touched.mtime_sec += 100;
        assert!(
            compare_entry(&e, &touched, ContentMode::Hash, BOTH_KNOWN)
                .0
                .is_empty()
        );
        assert_eq!(
            compare_entry(&e, &touched, ContentMode::MetadataOnly, BOTH_KNOWN)
                .0
                .len(),
            1
        );
    }
}
