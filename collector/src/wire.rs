//! The edge between the network and the store: every message from an agent
//! or a fleet client is validated here before anything is stored, and
//! stored records become protobuf replies here.
//!
//! Input from the network is hostile until validated: sizes are bounded,
//! enums and identifiers are checked, and a report that fails any check is
//! refused whole (with `INVALID_ARGUMENT` saying why), never half-applied.

use driftwatch_proto::pb::v1 as pb;
use pb::deviation::Subject;
use prost::Message as _;

use crate::config::{Limits, ReplacementPolicy};
use crate::notify::Notifier;
use crate::policy;
use crate::query::HostView;
use crate::store::{
    AlertWrite, Change, ChangeWrite, DeviationRecord, DriftPoint, FindingRecord, ImageRecord,
    ReportWrite, ScanEndWrite, SessionOpen,
};

/// Why a message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(message.into()))
}

pub const MAX_ID: usize = 255;
const MAX_TEXT: usize = 4096;
const MAX_PATH: usize = 4096;

/// A host id: 1 to 255 printable ASCII characters without spaces, so it
/// is safe in URLs, logs and terminals.
pub fn check_host_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > MAX_ID {
        return invalid(format!(
            "host_id must be 1 to {MAX_ID} bytes, got {}",
            id.len()
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return invalid("host_id must be printable ASCII without spaces");
    }
    Ok(())
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max {
        return invalid(format!("{field} is {} bytes, more than {max}", value.len()));
    }
    if value.chars().any(char::is_control) {
        return invalid(format!("{field} contains control characters"));
    }
    Ok(())
}

fn check_digest(field: &str, digest: &[u8]) -> Result<(), Invalid> {
    if digest.len() != 32 {
        return invalid(format!(
            "{field} must be a 32-byte BLAKE3 digest, got {} bytes",
            digest.len()
        ));
    }
    Ok(())
}

/// Validates an agent's hello.
pub fn session_open(hello: &pb::Hello, at: i64) -> Result<SessionOpen, Invalid> {
    check_host_id(&hello.host_id)?;
    check_text("hostname", &hello.hostname, MAX_ID)?;
    check_text("image_id", &hello.image_id, MAX_ID)?;
    check_text("image_version", &hello.image_version, MAX_ID)?;
    check_text("agent_version", &hello.agent_version, MAX_ID)?;
    check_digest("manifest_digest", &hello.manifest_digest)?;
    if hello.boot_time_unix < 0 || hello.boot_time_unix > at + 86_400 {
        return invalid(format!(
            "boot_time_unix {} is not a plausible boot time",
            hello.boot_time_unix
        ));
    }
    Ok(SessionOpen {
        host_id: hello.host_id.clone(),
        hostname: hello.hostname.clone(),
        image_id: hello.image_id.clone(),
        image_version: hello.image_version.clone(),
        manifest_digest: hello.manifest_digest.clone(),
        boot_time: hello.boot_time_unix,
        // A build time in the future is a lie or a broken clock.
        image_build_time: hello.image_build_time_unix.clamp(0, at + 86_400),
        agent_version: hello.agent_version.clone(),
        state_epoch: hello.state_epoch,
        at,
    })
}

/// Validates a report and turns it into a store write, classifying each
/// change against the replacement policy and the alert rules.
pub fn report_write(
    host: &SessionOpen,
    report: &pb::Report,
    limits: &Limits,
    policy: &ReplacementPolicy,
    notifier: &Notifier,
    at: i64,
) -> Result<ReportWrite, Invalid> {
    let host_id = host.host_id.as_str();
    // Sequence numbers and counts go into signed 64-bit columns.
    const MAX: u64 = i64::MAX as u64;
    if report.seq == 0 || report.seq > MAX {
        return invalid(format!("report seq must be 1 to {MAX}"));
    }
    if report.scan_id > MAX {
        return invalid(format!("report {}: scan_id above {MAX}", report.seq));
    }
    if report.dropped_reports >= report.seq {
        return invalid(format!(
            "report {} says {} reports were dropped before it",
            report.seq, report.dropped_reports
        ));
    }
    if report.changes.len() > limits.max_changes_per_report {
        return invalid(format!(
            "report {} has {} changes, more than the limit of {}",
            report.seq,
            report.changes.len(),
            limits.max_changes_per_report
        ));
    }
    let mut changes = Vec::with_capacity(report.changes.len());
    for (i, c) in report.changes.iter().enumerate() {
        let fail = |e: Invalid| Invalid(format!("report {} change {i}: {}", report.seq, e.0));
        let change = match pb::deviation_change::Change::try_from(c.change) {
            Ok(pb::deviation_change::Change::New) => Change::New,
            Ok(pb::deviation_change::Change::Changed) => Change::Changed,
            Ok(pb::deviation_change::Change::Resolved) => Change::Resolved,
            _ => return Err(fail(Invalid(format!("unknown change type {}", c.change)))),
        };
        let Some(deviation) = &c.deviation else {
            return Err(fail(Invalid("no deviation".into())));
        };
        check_deviation(deviation).map_err(fail)?;
        let critical = match change {
            Change::Resolved => None,
            _ => policy::critical(policy, deviation),
        };
        let key = deviation_key(deviation);
        let severity = notifier.severity(deviation);
        let sinks = notifier.sinks_for(severity);
        let alert = match change {
            Change::New | Change::Changed if !sinks.is_empty() => {
                let id = alert_id(host_id, &key, report.seq);
                Some(AlertWrite {
                    body: notifier.alert_body(host, deviation, severity, &id, at),
                    id,
                    sinks,
                })
            }
            _ => None,
        };
        changes.push(ChangeWrite {
            change,
            fingerprint: fingerprint(&key, deviation),
            key,
            kind: deviation.kind.clone(),
            body: deviation.encode_to_vec(),
            critical,
            severity: severity.as_str(),
            alert,
        });
    }
    let scan_end = match &report.scan_end {
        None => None,
        Some(end) => {
            if end.observed_items > MAX || end.not_verified > MAX {
                return invalid(format!("report {}: item counts above {MAX}", report.seq));
            }
            if end.deviating_items > end.observed_items {
                return invalid(format!(
                    "report {}: {} deviating items out of {} observed",
                    report.seq, end.deviating_items, end.observed_items
                ));
            }
            Some(ScanEndWrite {
                finished_at: if end.finished_at_unix > 0 {
                    end.finished_at_unix.min(at)
                } else {
                    at
                },
                // Recomputed with the one shared definition rather than
                // trusting the agent's float.
                drift_pct: driftwatch_proto::drift_pct(end.deviating_items, end.observed_items),
                deviating: end.deviating_items,
                observed: end.observed_items,
                not_verified: end.not_verified,
                snapshot: end.snapshot,
            })
        }
    };
    Ok(ReportWrite {
        host_id: host_id.to_string(),
        seq: report.seq,
        scan_id: report.scan_id,
        dropped_reports: report.dropped_reports,
        changes,
        scan_end,
        at,
    })
}

/// A stable id for the alert about one deviation event: receivers
/// deduplicate on it.
fn alert_id(host_id: &str, key: &[u8], seq: u64) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(host_id.as_bytes());
    hasher.update(&[0]);
    hasher.update(key);
    hasher.update(&seq.to_le_bytes());
    hasher.finalize().to_hex()[..32].to_string()
}

/// Kind and subject (`key`, from [`deviation_key`]) and actual value: the
/// same on every host with the same deviation (a hot-fix applied by hand fleet-wide), different otherwise.
pub fn fingerprint(key: &[u8], d: &pb::Deviation) -> Vec<u8> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(key);
    hasher.update(&[0]);
    if let Some(actual) = &d.actual {
        hasher.update(&actual.encode_to_vec());
    }
    hasher.finalize().as_bytes()[..16].to_vec()
}

fn check_deviation(d: &pb::Deviation) -> Result<(), Invalid> {
    if crate::alerts::Kind::parse(&d.kind).is_none() {
        return invalid(format!(
            "unknown deviation kind {:?}",
            d.kind.chars().take(64).collect::<String>()
        ));
    }
    match &d.subject {
        None => return invalid("deviation has no path or package"),
        Some(Subject::Path(path)) => {
            if path.is_empty() || path.len() > MAX_PATH {
                return invalid(format!("path must be 1 to {MAX_PATH} bytes"));
            }
            if path.contains(&0) || path.starts_with(b"/") {
                return invalid("path must be relative and contain no NUL");
            }
        }
        Some(Subject::Package(p)) => {
            for (field, value) in [
                ("package manager", &p.manager),
                ("package name", &p.name),
                ("package architecture", &p.architecture),
            ] {
                check_text(field, value, MAX_ID)?;
            }
            if !["dpkg", "rpm", "apk"].contains(&p.manager.as_str()) {
                return invalid(format!("unknown package manager {:?}", p.manager));
            }
            if p.name.is_empty() {
                return invalid("package name is empty");
            }
        }
    }
    for attrs in [&d.expected, &d.actual].into_iter().flatten() {
        for (field, value) in [
            ("type", &attrs.r#type),
            ("mtime", &attrs.mtime),
            ("symlink_target", &attrs.symlink_target),
            ("device", &attrs.device),
            ("capability", &attrs.capability),
            ("hardlinked_with", &attrs.hardlinked_with),
            ("version", &attrs.version),
        ] {
            if let Some(value) = value
                && value.len() > MAX_TEXT
            {
                return invalid(format!("{field} is longer than {MAX_TEXT} bytes"));
            }
        }
        if let Some(hash) = &attrs.blake3 {
            check_digest("blake3", hash)?;
        }
    }
    Ok(())
}

/// A deviation's identity on its host: kind and subject. Computed here,
/// never taken from the agent.
pub fn deviation_key(d: &pb::Deviation) -> Vec<u8> {
    let mut key = d.kind.as_bytes().to_vec();
    key.push(0);
    match &d.subject {
        Some(Subject::Path(path)) => {
            key.push(b'p');
            key.extend_from_slice(path);
        }
        Some(Subject::Package(p)) => {
            key.push(b'k');
            for part in [&p.manager, &p.name, &p.architecture] {
                key.extend_from_slice(part.as_bytes());
                key.push(0);
            }
        }
        None => {}
    }
    key
}

pub use driftwatch_proto::text::display_path;

/// Validates an image registration.
pub fn image_record(r: &pb::RegisterImageRequest, at: i64) -> Result<ImageRecord, Invalid> {
    check_digest("manifest_digest", &r.manifest_digest)?;
    check_text("image_id", &r.image_id, MAX_ID)?;
    check_text("image_version", &r.image_version, MAX_ID)?;
    check_text("source_commit", &r.source_commit, MAX_ID)?;
    Ok(ImageRecord {
        manifest_digest: r.manifest_digest.clone(),
        image_id: r.image_id.clone(),
        image_version: r.image_version.clone(),
        source_commit: r.source_commit.clone(),
        build_time: r.build_time_unix.clamp(0, at + 86_400),
        entries: r.entries,
        files: r.files,
        packages: r.packages,
        registered_at: at,
    })
}

pub fn host_summary(view: &HostView) -> pb::HostSummary {
    let (h, a, connected) = (&view.record, &view.assessment, view.connected);
    pb::HostSummary {
        queue_state: crate::queue::state(view).to_string(),
        priority: crate::queue::priority(view),
        drained_by: h.drained_by.clone(),
        host_id: h.host_id.clone(),
        hostname: h.hostname.clone(),
        image_id: h.image_id.clone(),
        image_version: h.image_version.clone(),
        manifest_digest: h.manifest_digest.clone(),
        status: h.status.as_str().to_string(),
        drift_pct: h.drift_pct,
        deviation_count: h.deviation_count,
        not_verified: h.not_verified,
        first_seen_unix: h.first_seen,
        last_seen_unix: h.last_seen,
        boot_time_unix: h.boot_time,
        instance_age_secs: a.instance_age_secs,
        image_age_secs: a.image_age_secs,
        agent_version: h.agent_version.clone(),
        flagged: a.flagged(),
        reasons: a
            .reasons
            .iter()
            .map(|r| pb::Reason {
                code: r.code.clone(),
                message: r.message.clone(),
                sticky: r.sticky,
                since_unix: r.since,
            })
            .collect(),
        acknowledged: a.acknowledged,
        last_scan_unix: h.last_scan,
        connected,
        dropped_reports: h.dropped_reports,
    }
}

pub fn host_deviation(d: &DeviationRecord) -> pb::HostDeviation {
    pb::HostDeviation {
        // Stored bodies were validated on the way in; a body that no longer
        // decodes (a corrupted database) still shows its kind.
        deviation: Some(
            pb::Deviation::decode(d.body.as_slice()).unwrap_or_else(|_| pb::Deviation {
                kind: d.kind.clone(),
                ..Default::default()
            }),
        ),
        first_seen_unix: d.first_seen,
        last_changed_unix: d.last_changed,
        critical: d.critical,
        severity: d.severity.clone(),
    }
}

pub fn drift_point(p: &DriftPoint) -> pb::DriftPoint {
    pb::DriftPoint {
        at_unix: p.at,
        drift_pct: p.drift_pct,
        deviating_items: p.deviating,
        observed_items: p.observed,
    }
}

pub fn image(i: &ImageRecord, hosts: u64, superseded_by: Option<&ImageRecord>) -> pb::Image {
    pb::Image {
        manifest_digest: i.manifest_digest.clone(),
        image_id: i.image_id.clone(),
        image_version: i.image_version.clone(),
        source_commit: i.source_commit.clone(),
        build_time_unix: i.build_time,
        entries: i.entries,
        files: i.files,
        packages: i.packages,
        registered_unix: i.registered_at,
        hosts,
        superseded_by: superseded_by
            .map(|n| n.image_version.clone())
            .unwrap_or_default(),
    }
}

pub fn finding(f: &FindingRecord) -> pb::Finding {
    pb::Finding {
        deviation: pb::Deviation::decode(f.body.as_slice()).ok(),
        severity: f.severity.clone(),
        host_count: f.host_count,
        host_ids: f.host_ids.clone(),
        first_seen_unix: f.first_seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn path_change(change: i32, kind: &str, path: &[u8]) -> pb::DeviationChange {
        pb::DeviationChange {
            change,
            deviation: Some(pb::Deviation {
                kind: kind.into(),
                subject: Some(Subject::Path(path.to_vec())),
                expected: None,
                actual: None,
            }),
        }
    }

    fn host() -> SessionOpen {
        session_open(
            &pb::Hello {
                host_id: "h".into(),
                manifest_digest: vec![0; 32],
                ..Default::default()
            },
            100,
        )
        .unwrap()
    }

    #[test]
    fn hostile_reports_are_refused_with_reasons() {
        let config = Config::default();
        let check = |changes: Vec<pb::DeviationChange>| {
            let report = pb::Report {
                seq: 1,
                changes,
                ..Default::default()
            };
            report_write(
                &host(),
                &report,
                &config.limits,
                &config.replacement,
                &Notifier::default(),
                1,
            )
            .map(|_| ())
            .map_err(|e| e.0)
        };
        assert_eq!(check(vec![path_change(1, "added", b"etc/x")]), Ok(()));
        for (change, expect) in [
            (path_change(9, "added", b"x"), "unknown change type 9"),
            (path_change(1, "exploded", b"x"), "unknown deviation kind"),
            (path_change(1, "added", b""), "path must be 1 to"),
            (path_change(1, "added", b"/etc/x"), "relative"),
            (path_change(1, "added", b"a\0b"), "NUL"),
            (path_change(1, "added", &[b'a'; 5000]), "path must be 1 to"),
            (
                pb::DeviationChange {
                    change: 1,
                    deviation: None,
                },
                "no deviation",
            ),
        ] {
            let err = check(vec![change]).unwrap_err();
            assert!(err.contains(expect), "{err}");
            assert!(err.starts_with("report 1 change 0"), "{err}");
        }
        let many = vec![path_change(1, "added", b"x"); 10_001];
        assert!(check(many).unwrap_err().contains("more than the limit"));
    }

    #[test]
    fn host_ids_and_hellos_are_checked() {
        assert!(check_host_id("web-01.prod").is_ok());
        assert!(check_host_id("").is_err());
        assert!(check_host_id("a b").is_err());
        assert!(check_host_id("a\u{1b}[2J").is_err());
        assert!(check_host_id(&"x".repeat(256)).is_err());
        let hello = pb::Hello {
            host_id: "h".into(),
            manifest_digest: vec![0; 31],
            ..Default::default()
        };
        assert!(
            session_open(&hello, 100)
                .unwrap_err()
                .0
                .contains("32-byte BLAKE3")
        );
    }

    #[test]
    fn keys_separate_kinds_and_subjects_and_paths_display_safely() {
        let a = path_change(1, "added", b"x").deviation.unwrap();
        let m = path_change(1, "modified", b"x").deviation.unwrap();
        assert_ne!(deviation_key(&a), deviation_key(&m));
    }
}
