//! From one scan's deviations to what the collector is told: what is new,
//! what changed and what was resolved since the previous scan, cut into
//! reports of a bounded size.
//!
//! Scans are compared in the wire form (see [`super::wire`]), because that
//! is what the collector holds: a deviation is CHANGED exactly when what
//! the collector would show for it differs, never because of a field that
//! is not sent. The key is (kind, subject), so a path whose content and
//! mode both changed is two deviations, each with its own history.
//!
//! A *snapshot* reports every current deviation as NEW and says so in
//! `ScanEnd.snapshot`; the collector then resolves whatever it held that
//! the snapshot does not mention. It is sent when the agent cannot trust
//! that the collector holds its previous scan: a fresh state directory, or
//! reports dropped from a full spool.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use driftwatch_proto::pb::v1 as pb;
use pb::deviation_change::Change;
use prost::Message as _;

use super::wire;
use crate::report::Deviation;

/// At most this many changes go in one report, so a host that drifted a
/// lot (a package upgrade touches thousands of files) is delivered and
/// acknowledged in steps instead of as one huge message.
pub const MAX_CHANGES_PER_REPORT: usize = 1000;

/// And at most about this many encoded bytes of changes: paths and symlink
/// targets can each be 4 KiB, and gRPC peers reject messages over 4 MiB by
/// default.
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;

/// What identifies a deviation from one scan to the next.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    kind: String,
    subject: SubjectKey,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SubjectKey {
    /// Never produced by this agent; kept so a malformed state file cannot
    /// make two different subjects collide.
    Missing,
    Path(Vec<u8>),
    Package {
        manager: String,
        name: String,
        architecture: String,
    },
}

impl Key {
    fn of(d: &pb::Deviation) -> Key {
        let subject = match &d.subject {
            None => SubjectKey::Missing,
            Some(pb::deviation::Subject::Path(p)) => SubjectKey::Path(p.clone()),
            Some(pb::deviation::Subject::Package(p)) => SubjectKey::Package {
                manager: p.manager.clone(),
                name: p.name.clone(),
                architecture: p.architecture.clone(),
            },
        };
        Key {
            kind: d.kind.clone(),
            subject,
        }
    }
}

/// One scan's deviations, keyed by (kind, subject), in wire form. This is
/// also what the spool persists as "the previous scan".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviationSet {
    by_key: BTreeMap<Key, pb::Deviation>,
}

impl DeviationSet {
    /// The set of a verify report's deviations (not its runtime-zone
    /// changes, which are expected and never drift).
    pub fn from_report(deviations: &[Deviation]) -> DeviationSet {
        DeviationSet::from_wire(deviations.iter().map(wire::deviation))
    }

    /// The set of deviations already in wire form. Verify reports each
    /// (kind, subject) once; should one come twice, the last one counts.
    pub fn from_wire(deviations: impl IntoIterator<Item = pb::Deviation>) -> DeviationSet {
        DeviationSet {
            by_key: deviations.into_iter().map(|d| (Key::of(&d), d)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = &pb::Deviation> {
        self.by_key.values()
    }
}

/// How many changes of each kind a scan produced, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    pub new: u64,
    pub changed: u64,
    pub resolved: u64,
}

impl ChangeCounts {
    pub fn of(changes: &[pb::DeviationChange]) -> ChangeCounts {
        let mut counts = ChangeCounts::default();
        for c in changes {
            match c.change() {
                Change::New => counts.new += 1,
                Change::Changed => counts.changed += 1,
                Change::Resolved => counts.resolved += 1,
                Change::Unspecified => {}
            }
        }
        counts
    }

    pub fn total(&self) -> u64 {
        self.new + self.changed + self.resolved
    }
}

fn change(kind: Change, deviation: pb::Deviation) -> pb::DeviationChange {
    pb::DeviationChange {
        change: kind as i32,
        deviation: Some(deviation),
    }
}

/// What changed from `previous` to `now`, in key order: NEW for a key not
/// there before, CHANGED for one whose values differ, RESOLVED (kind and
/// subject only) for one that is gone.
pub fn diff(previous: &DeviationSet, now: &DeviationSet) -> Vec<pb::DeviationChange> {
    let mut merged: BTreeMap<&Key, (Option<&pb::Deviation>, Option<&pb::Deviation>)> =
        BTreeMap::new();
    for (key, d) in &previous.by_key {
        merged.entry(key).or_default().0 = Some(d);
    }
    for (key, d) in &now.by_key {
        match merged.entry(key) {
            Entry::Occupied(mut e) => e.get_mut().1 = Some(d),
            Entry::Vacant(e) => {
                e.insert((None, Some(d)));
            }
        }
    }
    merged
        .into_values()
        .filter_map(|sides| match sides {
            (None, Some(now)) => Some(change(Change::New, now.clone())),
            (Some(before), Some(now)) if before != now => {
                Some(change(Change::Changed, now.clone()))
            }
            (Some(before), None) => Some(change(
                Change::Resolved,
                pb::Deviation {
                    kind: before.kind.clone(),
                    subject: before.subject.clone(),
                    expected: None,
                    actual: None,
                },
            )),
            _ => None,
        })
        .collect()
}

/// Every current deviation as NEW: the host's complete deviation set.
pub fn snapshot(now: &DeviationSet) -> Vec<pb::DeviationChange> {
    now.iter().map(|d| change(Change::New, d.clone())).collect()
}

/// Cuts a scan's changes into reports of at most [`MAX_CHANGES_PER_REPORT`]
/// changes (and about [`MAX_REPORT_BYTES`]). The first report carries
/// `dropped_reports`, the last carries `scan_end`; a scan with no changes
/// is still one report, so the collector records the scan. `seq` and
/// `scan_id` are left for the spool to assign.
pub fn into_reports(
    changes: Vec<pb::DeviationChange>,
    scan_end: pb::ScanEnd,
    dropped_reports: u64,
) -> Vec<pb::Report> {
    let mut reports = Vec::new();
    let mut current: Vec<pb::DeviationChange> = Vec::new();
    let mut bytes = 0usize;
    for c in changes {
        let len = c.encoded_len() + 4;
        if !current.is_empty()
            && (current.len() >= MAX_CHANGES_PER_REPORT || bytes + len > MAX_REPORT_BYTES)
        {
            reports.push(report(std::mem::take(&mut current)));
            bytes = 0;
        }
        bytes += len;
        current.push(c);
    }
    reports.push(report(current));
    if let Some(first) = reports.first_mut() {
        first.dropped_reports = dropped_reports;
    }
    if let Some(last) = reports.last_mut() {
        last.scan_end = Some(scan_end);
    }
    reports
}

fn report(changes: Vec<pb::DeviationChange>) -> pb::Report {
    pb::Report {
        changes,
        ..pb::Report::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_dev(kind: &str, path: &str, mode: u32) -> pb::Deviation {
        pb::Deviation {
            kind: kind.into(),
            subject: Some(pb::deviation::Subject::Path(path.as_bytes().to_vec())),
            expected: Some(pb::Attrs {
                mode: Some(0o644),
                ..Default::default()
            }),
            actual: Some(pb::Attrs {
                mode: Some(mode),
                ..Default::default()
            }),
        }
    }

    fn package_dev(name: &str, version: &str) -> pb::Deviation {
        pb::Deviation {
            kind: "package_changed".into(),
            subject: Some(pb::deviation::Subject::Package(pb::PackageRef {
                manager: "dpkg".into(),
                name: name.into(),
                architecture: "amd64".into(),
            })),
            expected: Some(pb::Attrs {
                version: Some("1".into()),
                ..Default::default()
            }),
            actual: Some(pb::Attrs {
                version: Some(version.into()),
                ..Default::default()
            }),
        }
    }

    fn summary(changes: &[pb::DeviationChange]) -> Vec<(Change, String)> {
        changes
            .iter()
            .map(|c| {
                let d = c.deviation.as_ref().unwrap();
                let subject = match d.subject.as_ref().unwrap() {
                    pb::deviation::Subject::Path(p) => String::from_utf8_lossy(p).into_owned(),
                    pb::deviation::Subject::Package(p) => p.name.clone(),
                };
                (c.change(), format!("{} {subject}", d.kind))
            })
            .collect()
    }

    #[test]
    fn new_changed_resolved_and_unchanged() {
        let before = DeviationSet::from_wire([
            path_dev("metadata", "etc/a", 0o600),
            path_dev("metadata", "etc/gone", 0o600),
            path_dev("metadata", "etc/same", 0o600),
            package_dev("bash", "2"),
        ]);
        let now = DeviationSet::from_wire([
            path_dev("metadata", "etc/a", 0o4755),
            path_dev("metadata", "etc/same", 0o600),
            // Same path, another kind: its own deviation.
            path_dev("modified", "etc/same", 0o600),
            path_dev("added", "usr/bin/nc", 0o755),
            package_dev("bash", "3"),
        ]);
        let changes = diff(&before, &now);
        assert_eq!(
            summary(&changes),
            [
                (Change::New, "added usr/bin/nc".to_string()),
                (Change::Changed, "metadata etc/a".to_string()),
                (Change::Resolved, "metadata etc/gone".to_string()),
                (Change::New, "modified etc/same".to_string()),
                (Change::Changed, "package_changed bash".to_string()),
            ]
        );
        // A resolution names the deviation, not its old values.
        let resolved = changes[2].deviation.as_ref().unwrap();
        assert_eq!((&resolved.expected, &resolved.actual), (&None, &None));
        // A change carries the new values.
        let changed = changes[1].deviation.as_ref().unwrap();
        assert_eq!(changed.actual.as_ref().unwrap().mode, Some(0o4755));
        assert_eq!(
            ChangeCounts::of(&changes),
            ChangeCounts {
                new: 2,
                changed: 2,
                resolved: 1
            }
        );
        assert!(diff(&now, &now).is_empty());
    }

    #[test]
    fn snapshot_is_everything_new() {
        let now =
            DeviationSet::from_wire([path_dev("added", "b", 0o755), path_dev("added", "a", 0o755)]);
        let changes = snapshot(&now);
        assert_eq!(
            summary(&changes),
            [
                (Change::New, "added a".to_string()),
                (Change::New, "added b".to_string())
            ]
        );
        assert!(snapshot(&DeviationSet::default()).is_empty());
    }

    #[test]
    fn reports_hold_at_most_a_thousand_changes_and_the_last_ends_the_scan() {
        let now = DeviationSet::from_wire(
            (0..2500).map(|i| path_dev("added", &format!("f{i:05}"), 0o644)),
        );
        let end = pb::ScanEnd {
            drift_pct: 1.5,
            ..Default::default()
        };
        let reports = into_reports(snapshot(&now), end, 7);
        let sizes: Vec<usize> = reports.iter().map(|r| r.changes.len()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        assert_eq!(reports[0].dropped_reports, 7);
        assert_eq!(reports[1].dropped_reports, 0);
        assert!(reports[..2].iter().all(|r| r.scan_end.is_none()));
        assert_eq!(reports[2].scan_end, Some(end));
    }

    #[test]
    fn a_scan_without_changes_is_still_one_report() {
        let reports = into_reports(Vec::new(), pb::ScanEnd::default(), 0);
        assert_eq!(reports.len(), 1);
        assert!(reports[0].changes.is_empty());
        assert!(reports[0].scan_end.is_some());
    }

    #[test]
    fn huge_changes_are_split_by_size_too() {
        let long = "x".repeat(4000);
        let now = DeviationSet::from_wire(
            (0..600).map(|i| path_dev("added", &format!("{long}/{i:04}"), 0o644)),
        );
        let reports = into_reports(snapshot(&now), pb::ScanEnd::default(), 0);
        assert!(reports.len() > 1);
        for r in &reports {
            assert!(r.encoded_len() <= MAX_REPORT_BYTES + 64 * 1024);
        }
        let total: usize = reports.iter().map(|r| r.changes.len()).sum();
        assert_eq!(total, 600);
    }
}
