//! The alert body: one JSON object per new deviation, built once (inside
//! the transaction that stores the deviation) and sent unchanged to every
//! sink, on every attempt.
//!
//! ```json
//! {
//!   "version": 1,
//!   "id": "4711",
//!   "event": "deviation.new",
//!   "severity": "high",
//!   "host_id": "web-01",
//!   "hostname": "web-01.example.net",
//!   "image_id": "web",
//!   "image_version": "2024.06.1",
//!   "kind": "added",
//!   "path": "usr/bin/nc",
//!   "expected": null,
//!   "actual": {"type": "file", "mode": "0755", "uid": 0, "gid": 0, "size": 35528,
//!              "blake3": "9f86d0…"},
//!   "first_seen": "2024-06-01T12:00:00Z",
//!   "collector": "collector-1"
//! }
//! ```
//!
//! - `id` is the alert's id (the outbox row's), the same for every sink and
//!   every attempt: receivers deduplicate on it (it is also sent as the
//!   `X-Driftwatch-Alert-Id` header and syslog's `id` parameter).
//! - File deviations have `path`: the path relative to the root, with
//!   control characters and `\` escaped and invalid UTF-8 as `\xNN`
//!   (exactly as the ops command line shows it), plus `path_base64` with
//!   the raw bytes when the path is not UTF-8. Package deviations have
//!   `package`, `manager` and `architecture` instead.
//! - `expected` (the image's side, `null` for additions) and `actual` (the
//!   host's side, `null` for removals) hold only the attributes that
//!   differ: `type`, `mode` (octal text such as `"4755"`), `uid`, `gid`,
//!   `size`, `mtime`, `blake3` (hex), `symlink_target`, `device`,
//!   `capability`, `hardlinked_with`, `version` (packages).
//! - `first_seen` is RFC 3339 UTC; `collector` is the collector's host name.
//!
//! New fields may be added within version 1; receivers must ignore fields
//! they do not know.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use driftwatch_proto::manifest::hex;
use driftwatch_proto::pb::v1::{Attrs, Deviation, deviation::Subject};
use driftwatch_proto::text::display_path;
use serde::{Deserialize, Serialize};

use super::rules::Severity;

/// The body's format version.
pub const VERSION: u32 = 1;

/// The `event` of an alert about a deviation that was not there before.
pub const EVENT_DEVIATION_NEW: &str = "deviation.new";

/// One alert, as its JSON body says it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub version: u32,
    pub id: String,
    pub event: String,
    pub severity: Severity,
    pub host_id: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub image_id: String,
    #[serde(default)]
    pub image_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default)]
    pub expected: Option<AttrsJson>,
    #[serde(default)]
    pub actual: Option<AttrsJson>,
    #[serde(default)]
    pub first_seen: String,
    #[serde(default)]
    pub collector: String,
}

/// One side of a deviation: only the attributes that were set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttrsJson {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub file_type: Option<String>,
    /// Octal, at least four digits: `"0755"`, `"4755"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
    /// Hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardlinked_with: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl From<&Attrs> for AttrsJson {
    fn from(a: &Attrs) -> AttrsJson {
        AttrsJson {
            file_type: a.r#type.clone(),
            mode: a.mode.map(|m| format!("{m:04o}")),
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            mtime: a.mtime.clone(),
            blake3: a.blake3.as_deref().map(hex),
            symlink_target: a.symlink_target.clone(),
            device: a.device.clone(),
            capability: a.capability.clone(),
            hardlinked_with: a.hardlinked_with.clone(),
            version: a.version.clone(),
        }
    }
}

/// The host an alert is about, as the store has it.
#[derive(Debug, Clone, Copy)]
pub struct HostFields<'a> {
    pub host_id: &'a str,
    pub hostname: &'a str,
    pub image_id: &'a str,
    pub image_version: &'a str,
}

/// The alert for one new deviation.
///
/// `id` is the alert's stable id (the outbox row's), `first_seen` Unix
/// seconds, `collector` this collector's host name (see
/// [`super::local_hostname`]).
pub fn alert_event(
    id: &str,
    host: &HostFields<'_>,
    deviation: &Deviation,
    severity: Severity,
    first_seen: i64,
    collector: &str,
) -> AlertEvent {
    let mut event = AlertEvent {
        version: VERSION,
        id: id.to_string(),
        event: EVENT_DEVIATION_NEW.to_string(),
        severity,
        host_id: host.host_id.to_string(),
        hostname: host.hostname.to_string(),
        image_id: host.image_id.to_string(),
        image_version: host.image_version.to_string(),
        kind: deviation.kind.clone(),
        path: None,
        path_base64: None,
        package: None,
        manager: None,
        architecture: None,
        expected: deviation.expected.as_ref().map(AttrsJson::from),
        actual: deviation.actual.as_ref().map(AttrsJson::from),
        first_seen: rfc3339(first_seen),
        collector: collector.to_string(),
    };
    match &deviation.subject {
        Some(Subject::Path(path)) => {
            event.path = Some(display_path(path));
            if std::str::from_utf8(path).is_err() {
                event.path_base64 = Some(base64::engine::general_purpose::STANDARD.encode(path));
            }
        }
        Some(Subject::Package(p)) => {
            event.package = Some(p.name.clone());
            event.manager = Some(p.manager.clone());
            event.architecture = Some(p.architecture.clone());
        }
        None => {}
    }
    event
}

/// The JSON body of the alert for one new deviation: [`alert_event`],
/// serialised. Pure and cheap, to be called inside the transaction that
/// stores the deviation and the outbox row.
pub fn alert_body(
    id: &str,
    host: &HostFields<'_>,
    deviation: &Deviation,
    severity: Severity,
    first_seen: i64,
    collector: &str,
) -> Vec<u8> {
    let event = alert_event(id, host, deviation, severity, first_seen, collector);
    serde_json::to_vec(&event).expect("an alert serialises")
}

/// Reads an alert body back (sinks that need its fields, such as syslog).
pub fn parse_body(body: &[u8]) -> Result<AlertEvent, serde_json::Error> {
    serde_json::from_slice(body)
}

/// RFC 3339 UTC with seconds; times before the epoch show as the epoch.
pub fn rfc3339(unix_secs: i64) -> String {
    // humantime cannot show years past 9999.
    let secs = unix_secs.clamp(0, 253_402_300_799) as u64;
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_proto::pb::v1::PackageRef;
    use serde_json::{Value, json};

    const HOST: HostFields<'static> = HostFields {
        host_id: "web-01",
        hostname: "web-01.example.net",
        image_id: "web",
        image_version: "2024.06.1",
    };

    fn body(deviation: &Deviation, severity: Severity) -> Value {
        let bytes = alert_body("4711", &HOST, deviation, severity, 1_700_000_000, "coll-1");
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_file_alert_has_every_field_and_only_set_attributes() {
        let deviation = Deviation {
            kind: "modified".into(),
            subject: Some(Subject::Path(b"usr/bin/sudo".to_vec())),
            expected: Some(Attrs {
                r#type: Some("file".into()),
                mode: Some(0o755),
                blake3: Some(vec![0xab; 32]),
                size: Some(10),
                ..Default::default()
            }),
            actual: Some(Attrs {
                r#type: Some("file".into()),
                mode: Some(0o4755),
                blake3: Some(vec![0x01; 32]),
                size: Some(12),
                capability: Some("none".into()),
                ..Default::default()
            }),
        };
        let v = body(&deviation, Severity::High);
        assert_eq!(
            v,
            json!({
                "version": 1,
                "id": "4711",
                "event": "deviation.new",
                "severity": "high",
                "host_id": "web-01",
                "hostname": "web-01.example.net",
                "image_id": "web",
                "image_version": "2024.06.1",
                "kind": "modified",
                "path": "usr/bin/sudo",
                "expected": {"type": "file", "mode": "0755", "size": 10, "blake3": "ab".repeat(32)},
                "actual": {"type": "file", "mode": "4755", "size": 12, "blake3": "01".repeat(32),
                           "capability": "none"},
                "first_seen": "2023-11-14T22:13:20Z",
                "collector": "coll-1",
            })
        );
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys[..4],
            ["version", "id", "event", "severity"],
            "stable key order"
        );
    }

    #[test]
    fn hostile_and_non_utf8_paths_are_escaped_with_the_raw_bytes_in_base64() {
        let added = |path: &[u8]| Deviation {
            kind: "added".into(),
            subject: Some(Subject::Path(path.to_vec())),
            expected: None,
            actual: Some(Attrs {
                mode: Some(0o644),
                ..Default::default()
            }),
        };
        let v = body(&added(b"tmp/\xff\xfe\n\x1b[31m"), Severity::Low);
        assert_eq!(v["path"], "tmp/\\xff\\xfe\\n\\u{1b}[31m");
        assert_eq!(v["path_base64"], "dG1wL//+ChtbMzFt");
        assert_eq!(v["expected"], Value::Null);
        assert_eq!(v["actual"], json!({"mode": "0644"}));
        let v = body(&added("etc/caf\u{e9}\nx".as_bytes()), Severity::Medium);
        assert_eq!(v["path"], "etc/caf\u{e9}\\nx");
        assert!(v.get("path_base64").is_none(), "UTF-8 paths have no base64");
        assert!(v.get("package").is_none());
    }

    #[test]
    fn a_package_alert_names_the_package() {
        let deviation = Deviation {
            kind: "package_changed".into(),
            subject: Some(Subject::Package(PackageRef {
                manager: "dpkg".into(),
                name: "openssl".into(),
                architecture: "amd64".into(),
            })),
            expected: Some(Attrs {
                version: Some("3.0.11-1".into()),
                ..Default::default()
            }),
            actual: Some(Attrs {
                version: Some("3.0.13-1".into()),
                ..Default::default()
            }),
        };
        let v = body(&deviation, Severity::High);
        assert_eq!(v["package"], "openssl");
        assert_eq!(v["manager"], "dpkg");
        assert_eq!(v["architecture"], "amd64");
        assert_eq!(v["expected"], json!({"version": "3.0.11-1"}));
        assert_eq!(v["actual"], json!({"version": "3.0.13-1"}));
        assert!(v.get("path").is_none());
    }

    #[test]
    fn the_body_parses_back_and_ignores_unknown_fields() {
        let deviation = Deviation {
            kind: "removed".into(),
            subject: Some(Subject::Path(b"etc/hosts".to_vec())),
            expected: Some(Attrs {
                uid: Some(0),
                ..Default::default()
            }),
            actual: None,
        };
        let bytes = alert_body("9", &HOST, &deviation, Severity::Medium, 5, "c");
        let event = parse_body(&bytes).unwrap();
        assert_eq!(
            event,
            alert_event("9", &HOST, &deviation, Severity::Medium, 5, "c")
        );
        assert_eq!(event.first_seen, "1970-01-01T00:00:05Z");
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        v["from_the_future"] = json!(true);
        assert!(parse_body(v.to_string().as_bytes()).is_ok());
        assert!(parse_body(b"{}").is_err());
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
    }
}
