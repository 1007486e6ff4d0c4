//! How fleet data is shown: aligned tables for terminals, JSON for scripts.
//! JSON field names are a contract (schedulers parse them); tables are for
//! people and may change.

use std::fmt::Write as _;

use base64::Engine as _;
use driftwatch_proto::manifest::hex;
use driftwatch_proto::pb::v1 as pb;
use pb::deviation::Subject;
use serde_json::{Value, json};

use crate::time;
use crate::wire::display_path;

pub fn host_json(h: &pb::HostSummary) -> Value {
    json!({
        "host_id": h.host_id,
        "hostname": h.hostname,
        "image_id": h.image_id,
        "image_version": h.image_version,
        "manifest_digest": hex(&h.manifest_digest),
        "status": h.status,
        "drift_pct": h.drift_pct,
        "deviation_count": h.deviation_count,
        "not_verified": h.not_verified,
        "instance_age_secs": h.instance_age_secs,
        "image_age_secs": h.image_age_secs,
        "flagged": h.flagged,
        "acknowledged": h.acknowledged,
        "reasons": h.reasons.iter().map(|r| json!({
            "code": r.code,
            "message": r.message,
            "sticky": r.sticky,
            "since": time::utc(r.since_unix),
        })).collect::<Vec<_>>(),
        "connected": h.connected,
        "dropped_reports": h.dropped_reports,
        "queue_state": h.queue_state,
        "priority": h.priority,
        "drained_by": h.drained_by,
        "first_seen": time::utc(h.first_seen_unix),
        "last_seen": time::utc(h.last_seen_unix),
        "last_seen_unix": h.last_seen_unix,
        "boot_time": time::utc(h.boot_time_unix),
        "last_scan": time::utc(h.last_scan_unix),
        "agent_version": h.agent_version,
    })
}

pub fn hosts_json(hosts: &[pb::HostSummary]) -> Value {
    Value::Array(hosts.iter().map(host_json).collect())
}

/// A table of hosts, one per line.
pub fn hosts_table(hosts: &[pb::HostSummary]) -> String {
    let mut rows = vec![
        [
            "HOST",
            "IMAGE",
            "DRIFT%",
            "DEVIATIONS",
            "AGE",
            "LAST SEEN",
            "STATUS",
            "REASONS",
        ]
        .map(String::from),
    ];
    for h in hosts {
        let status = match (h.status.as_str(), h.flagged, h.acknowledged) {
            ("retired", _, _) => "retired".to_string(),
            (_, true, true) => "flagged (acked)".to_string(),
            (_, true, false) => "FLAGGED".to_string(),
            _ => "ok".to_string(),
        };
        rows.push([
            h.host_id.clone(),
            format!("{} {}", or_dash(&h.image_id), or_dash(&h.image_version)),
            format!("{:.3}", h.drift_pct),
            h.deviation_count.to_string(),
            time::age(h.instance_age_secs),
            format!(
                "{} ago{}",
                time::age(time::now() - h.last_seen_unix),
                if h.connected { "" } else { " (offline)" }
            ),
            status,
            h.reasons
                .iter()
                .map(|r| r.code.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    if hosts.is_empty() {
        return "no hosts\n".into();
    }
    table(&rows)
}

/// The replacement queue: each host with its reasons spelled out.
pub fn replacements_text(hosts: &[pb::HostSummary]) -> String {
    if hosts.is_empty() {
        return "no hosts to replace\n".into();
    }
    let mut out = String::new();
    for (i, h) in hosts.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}. {}  {} {}  drift {:.3}%  age {}{}",
            i + 1,
            h.host_id,
            or_dash(&h.image_id),
            or_dash(&h.image_version),
            h.drift_pct,
            time::age(h.instance_age_secs),
            if h.acknowledged {
                "  (acknowledged)"
            } else {
                ""
            }
        );
        for r in &h.reasons {
            let _ = writeln!(
                out,
                "   - {}{}: {}",
                r.code,
                if r.sticky { " (until retired)" } else { "" },
                r.message
            );
        }
    }
    out
}

pub fn report_json(report: &pb::HostReport) -> Value {
    let mut host = report.host.as_ref().map(host_json).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut host {
        map.insert(
            "deviations".into(),
            report
                .deviations
                .iter()
                .map(deviation_json)
                .collect::<Vec<_>>()
                .into(),
        );
        map.insert(
            "history".into(),
            report
                .history
                .iter()
                .map(|p| {
                    json!({
                        "at": time::utc(p.at_unix),
                        "at_unix": p.at_unix,
                        "drift_pct": p.drift_pct,
                        "deviating_items": p.deviating_items,
                        "observed_items": p.observed_items,
                    })
                })
                .collect::<Vec<_>>()
                .into(),
        );
    }
    host
}

fn deviation_json(d: &pb::HostDeviation) -> Value {
    let dev = d.deviation.clone().unwrap_or_default();
    let v = json!({
        "kind": dev.kind,
        "severity": d.severity,
        "critical": d.critical,
        "first_seen": time::utc(d.first_seen_unix),
        "last_changed": time::utc(d.last_changed_unix),
        "expected": dev.expected.as_ref().map(attrs_json),
        "actual": dev.actual.as_ref().map(attrs_json),
    });
    with_subject(v, &dev)
}

/// Adds `path` (and `path_base64` for non-UTF-8 names) or `package`,
/// `manager` and `architecture`.
fn with_subject(mut v: Value, dev: &pb::Deviation) -> Value {
    let map = v.as_object_mut().expect("an object");
    match &dev.subject {
        Some(Subject::Path(path)) => {
            map.insert("path".into(), display_path(path).into());
            if std::str::from_utf8(path).is_err() {
                map.insert(
                    "path_base64".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(path)
                        .into(),
                );
            }
        }
        Some(Subject::Package(p)) => {
            map.insert("package".into(), p.name.clone().into());
            map.insert("manager".into(), p.manager.clone().into());
            map.insert("architecture".into(), p.architecture.clone().into());
        }
        None => {}
    }
    v
}

fn attrs_json(a: &pb::Attrs) -> Value {
    let mut map = serde_json::Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            map.insert(k.into(), v);
        }
    };
    put("type", a.r#type.clone().map(Into::into));
    put("mode", a.mode.map(|m| format!("{m:04o}").into()));
    put("uid", a.uid.map(Into::into));
    put("gid", a.gid.map(Into::into));
    put("size", a.size.map(Into::into));
    put("mtime", a.mtime.clone().map(Into::into));
    put("blake3", a.blake3.as_ref().map(|h| hex(h).into()));
    put("symlink_target", a.symlink_target.clone().map(Into::into));
    put("device", a.device.clone().map(Into::into));
    put("capability", a.capability.clone().map(Into::into));
    put("hardlinked_with", a.hardlinked_with.clone().map(Into::into));
    put("version", a.version.clone().map(Into::into));
    Value::Object(map)
}

/// One host for a person: summary, reasons, deviations, recent drift.
pub fn report_text(report: &pb::HostReport) -> String {
    let mut out = String::new();
    let Some(h) = &report.host else {
        return out;
    };
    let _ = writeln!(
        out,
        "{} ({})  {}  image {} {}  manifest {}",
        h.host_id,
        or_dash(&h.hostname),
        h.status,
        or_dash(&h.image_id),
        or_dash(&h.image_version),
        crate::policy::short_hex(&h.manifest_digest)
    );
    let _ = writeln!(
        out,
        "drift {:.3}%, {} deviations, {} not verified; instance age {}, image age {}",
        h.drift_pct,
        h.deviation_count,
        h.not_verified,
        time::age(h.instance_age_secs),
        time::age(h.image_age_secs)
    );
    let _ = writeln!(
        out,
        "first seen {}, last seen {}{}, last scan {}, agent {}",
        time::utc(h.first_seen_unix),
        time::utc(h.last_seen_unix),
        if h.connected { " (connected)" } else { "" },
        time::utc(h.last_scan_unix),
        or_dash(&h.agent_version)
    );
    if h.dropped_reports > 0 {
        let _ = writeln!(
            out,
            "{} reports dropped by the agent's bounded spool: changes between scans were lost, \
             the current state was resent whole",
            h.dropped_reports
        );
    }
    if h.flagged {
        let _ = writeln!(
            out,
            "\nFLAGGED for replacement{}:",
            if h.acknowledged {
                " (acknowledged)"
            } else {
                ""
            }
        );
        for r in &h.reasons {
            let _ = writeln!(out, "  - {}: {}", r.code, r.message);
        }
    }
    if !report.deviations.is_empty() {
        let shown = report.deviations.len() as u64;
        if shown < h.deviation_count {
            let _ = writeln!(
                out,
                "\ndeviations (showing {shown} of {}, critical first; --limit to change):",
                h.deviation_count
            );
        } else {
            let _ = writeln!(out, "\ndeviations ({shown}):");
        }
        for d in &report.deviations {
            let dev = d.deviation.clone().unwrap_or_default();
            let subject = match &dev.subject {
                Some(Subject::Path(p)) => display_path(p),
                Some(Subject::Package(p)) => {
                    format!("{} {} ({})", p.manager, p.name, p.architecture)
                }
                None => "-".into(),
            };
            let _ = writeln!(
                out,
                "  {}{:<16} {:<48} {}",
                if d.critical { "!" } else { " " },
                dev.kind,
                subject,
                change_text(dev.expected.as_ref(), dev.actual.as_ref())
            );
        }
    }
    if let Some(last) = report.history.last() {
        let _ = writeln!(
            out,
            "\ndrift history: {} scans, latest {:.3}% at {}",
            report.history.len(),
            last.drift_pct,
            time::utc(last.at_unix)
        );
    }
    out
}

fn change_text(expected: Option<&pb::Attrs>, actual: Option<&pb::Attrs>) -> String {
    let e = expected.map(attrs_json).unwrap_or(Value::Null);
    let a = actual.map(attrs_json).unwrap_or(Value::Null);
    let fields = |v: &Value| -> Vec<(String, String)> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), short)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (e, a) = (fields(&e), fields(&a));
    match (e.is_empty(), a.is_empty()) {
        (true, true) => String::new(),
        (true, false) => a
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        (false, true) => format!(
            "was {}",
            e.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (false, false) => e
            .iter()
            .map(|(k, before)| {
                let after = a
                    .iter()
                    .find(|(n, _)| n == k)
                    .map_or("?", |(_, v)| v.as_str());
                format!("{k} {before} -> {after}")
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Long hashes are cut for terminals; JSON keeps them whole.
fn short(v: &str) -> String {
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{}…", &v[..16])
    } else {
        v.to_string()
    }
}

pub fn image_json(i: &pb::Image) -> Value {
    json!({
        "manifest_digest": hex(&i.manifest_digest),
        "image_id": i.image_id,
        "image_version": i.image_version,
        "source_commit": i.source_commit,
        "build_time": time::utc(i.build_time_unix),
        "build_time_unix": i.build_time_unix,
        "image_age_secs": if i.build_time_unix > 0 { time::now() - i.build_time_unix } else { -1 },
        "superseded_by": if i.superseded_by.is_empty() { Value::Null } else { i.superseded_by.clone().into() },
        "entries": i.entries,
        "files": i.files,
        "packages": i.packages,
        "registered": time::utc(i.registered_unix),
        "hosts": i.hosts,
    })
}

pub fn images_table(images: &[pb::Image]) -> String {
    if images.is_empty() {
        return "no images registered\n".into();
    }
    let mut rows =
        vec![["IMAGE", "VERSION", "DIGEST", "BUILT", "ENTRIES", "HOSTS"].map(String::from)];
    for i in images {
        rows.push([
            or_dash(&i.image_id).to_string(),
            or_dash(&i.image_version).to_string(),
            crate::policy::short_hex(&i.manifest_digest),
            time::utc(i.build_time_unix),
            i.entries.to_string(),
            i.hosts.to_string(),
        ]);
    }
    table(&rows)
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn findings_json(findings: &[pb::Finding]) -> Value {
    Value::Array(
        findings
            .iter()
            .map(|f| {
                let dev = f.deviation.clone().unwrap_or_default();
                let v = json!({
                    "kind": dev.kind,
                    "severity": f.severity,
                    "host_count": f.host_count,
                    "hosts": f.host_ids,
                    "first_seen": time::utc(f.first_seen_unix),
                    "actual_blake3": dev.actual.as_ref().and_then(|a| a.blake3.as_ref()).map(|h| hex(h)),
                    "actual": dev.actual.as_ref().map(attrs_json),
                });
                with_subject(v, &dev)
            })
            .collect(),
    )
}

pub fn findings_table(findings: &[pb::Finding]) -> String {
    if findings.is_empty() {
        return "no deviation is shared by several hosts\n".into();
    }
    let mut rows =
        vec![["SEVERITY", "KIND", "SUBJECT", "HOSTS", "FIRST SEEN", "ON"].map(String::from)];
    for f in findings {
        let dev = f.deviation.clone().unwrap_or_default();
        let mut on = f
            .host_ids
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(",");
        if f.host_count > 3 {
            on.push_str(&format!(",+{}", f.host_count - 3));
        }
        rows.push([
            f.severity.clone(),
            dev.kind.clone(),
            subject_text(&dev),
            f.host_count.to_string(),
            time::utc(f.first_seen_unix),
            on,
        ]);
    }
    table(&rows)
}

fn subject_text(dev: &pb::Deviation) -> String {
    match &dev.subject {
        Some(Subject::Path(p)) => display_path(p),
        Some(Subject::Package(p)) => format!("{} {} ({})", p.manager, p.name, p.architecture),
        None => "-".into(),
    }
}

pub fn queue_json(q: &pb::Queue) -> Value {
    json!({
        "budget": {
            "max_draining": q.max_draining,
            "max_draining_pct": q.max_draining_pct,
            "draining_now": q.draining_now,
        },
        "hosts": q.entries.iter().map(|e| {
            let mut v = e.host.as_ref().map(host_json).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut v {
                map.insert("state".into(), e.state.clone().into());
                map.insert("priority".into(), e.priority.into());
                map.insert("held_back".into(), (!e.held_back.is_empty()).into());
                map.insert("held_reason".into(), if e.held_back.is_empty() { Value::Null } else { e.held_back.clone().into() });
            }
            v
        }).collect::<Vec<_>>(),
    })
}

pub fn queue_text(q: &pb::Queue) -> String {
    let mut out = String::new();
    let limits: Vec<String> = q
        .max_draining
        .map(|n| format!("at most {n} hosts"))
        .into_iter()
        .chain(
            q.max_draining_pct
                .map(|p| format!("at most {p}% of an image's hosts")),
        )
        .collect();
    let _ = writeln!(
        out,
        "{} draining; budget: {}",
        q.draining_now,
        if limits.is_empty() {
            "none".to_string()
        } else {
            limits.join(", ")
        }
    );
    if q.entries.is_empty() {
        out.push_str("queue empty\n");
        return out;
    }
    let mut rows = vec![
        [
            "PRIORITY",
            "HOST",
            "IMAGE",
            "STATE",
            "DRIFT%",
            "REASONS",
            "HELD BACK",
        ]
        .map(String::from),
    ];
    for e in &q.entries {
        let Some(h) = &e.host else { continue };
        rows.push([
            e.priority.to_string(),
            h.host_id.clone(),
            format!("{} {}", or_dash(&h.image_id), or_dash(&h.image_version)),
            if e.state == "draining" {
                format!("draining ({})", h.drained_by)
            } else {
                e.state.clone()
            },
            format!("{:.3}", h.drift_pct),
            h.reasons
                .iter()
                .map(|r| r.code.as_str())
                .collect::<Vec<_>>()
                .join(","),
            e.held_back.clone(),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// CSV (RFC 4180) of hosts, for spreadsheets and pipelines.
pub fn hosts_csv(hosts: &[pb::HostSummary]) -> String {
    let mut out = String::from(
        "host_id,hostname,image_id,image_version,status,queue_state,drift_pct,deviation_count,instance_age_secs,image_age_secs,flagged,acknowledged,reasons,last_seen\n",
    );
    for h in hosts {
        let fields = [
            h.host_id.clone(),
            h.hostname.clone(),
            h.image_id.clone(),
            h.image_version.clone(),
            h.status.clone(),
            h.queue_state.clone(),
            h.drift_pct.to_string(),
            h.deviation_count.to_string(),
            h.instance_age_secs.to_string(),
            h.image_age_secs.to_string(),
            h.flagged.to_string(),
            h.acknowledged.to_string(),
            h.reasons
                .iter()
                .map(|r| r.code.as_str())
                .collect::<Vec<_>>()
                .join(";"),
            time::utc(h.last_seen_unix),
        ];
        out.push_str(
            &fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

fn csv_field(f: &str) -> String {
    // A leading =, +, - or @ would be a formula in a spreadsheet: quote
    // and prefix it, since host-controlled text ends up here.
    let risky = f.starts_with(['=', '+', '-', '@']) && f.parse::<f64>().is_err();
    if risky || f.contains([',', '"', '\n', '\r']) {
        format!(
            "\"{}{}\"",
            if risky { "'" } else { "" },
            f.replace('"', "\"\"")
        )
    } else {
        f.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_hosts_json_has_the_contract_fields() {
        let h = pb::HostSummary {
            host_id: "web-1".into(),
            image_id: "base".into(),
            image_version: "7".into(),
            drift_pct: 1.25,
            flagged: true,
            reasons: vec![pb::Reason {
                code: "drift_threshold".into(),
                message: "drift".into(),
                sticky: false,
                since_unix: 5,
            }],
            status: "active".into(),
            ..Default::default()
        };
        let text = hosts_table(std::slice::from_ref(&h));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("IMAGE"), lines[1].find("base"));
        assert!(lines[1].contains("FLAGGED") && lines[1].ends_with("drift_threshold"));
        let json = hosts_json(&[h]);
        for key in [
            "host_id",
            "image_id",
            "drift_pct",
            "instance_age_secs",
            "flagged",
            "reasons",
            "last_seen",
        ] {
            assert!(json[0].get(key).is_some(), "{key}");
        }
    }
}
